"""Reading dead-letter topics, and replaying dead letters to the topic they came from.

The stream worker writes what it cannot apply to ``<topic>.dlq`` with headers naming the
reason, its category and the original position (``dead_letters``). This module reads them back
(``read_letters``, ``summarize``, ``show``) and sends them again (``replay``) once the producer
or the contract is fixed.

Reading stops at the end of the topic: every partition read up to the end offset the broker
reported when the reading began, then a poll that returns nothing for ``IDLE_MS``. A reported
end is a lower bound on some brokers (the embedded one reports the first offset of the last
batch plus one; a fetch returns that batch whole), hence the empty poll; what was written
before the reading began is read whole. A fetch may also return later batches without earlier
ones: a reader that sees an offset jump seeks back to the first missing offset and reads again
(``GAP_RETRIES`` times) before it reports the jump as a gap (``Gap``): ``list`` and ``show``
warn; ``replay`` stops that partition before it (the next run goes on from there), and refuses
to run on a replay record (below) it cannot read whole.

Replays are recorded in ``<topic>.dlq.replays`` (one partition, JSON records), so that running
``replay`` twice never sends a dead letter twice:

* each round of a replay writes ``begin`` (its id, its reason filter, ``upto``: the offset per
  dead-letter partition it read up to, and the end offsets of the topics it sends to), sends its
  dead letters with the headers ``featurepipe-replay-id`` and ``featurepipe-replay-of``
  (``<dlq topic>/<partition>/<offset>``), waits for the broker to have them all, then writes
  ``done``. A dead letter counts as replayed when a completed round whose filter matches it
  read past its offset; a dead letter that cannot be replayed (its payload or key was cut to fit
  the dead-letter topic, or it had no value) counts as handled the same way;
* a round interrupted between ``begin`` and ``done`` is completed by the next ``replay`` before
  anything else: it reads the target topics from the ends recorded in ``begin`` for messages
  carrying the round's id, and sends only the dead letters not found there. A crash therefore
  never sends a dead letter twice, nor loses one.

Run one replay of a dead-letter topic at a time. The record lives on the broker next to the
dead letters; the consumer-group offset store is not used because filtered replays need the
filter kept with the position, and not every broker keeps commit metadata.

A filter (``--reason``) matches a dead letter whose category equals it, or whose reason contains
it (both ignoring case).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from featurepipe.errors import FeaturepipeError
from featurepipe.settings import kafka_security
from featurepipe.stream.dead_letters import (
    CATEGORY_HEADER,
    DLQ_SUFFIX,
    MAX_DEAD_LETTER_BYTES,
    ORIGINAL_KEY_SIZE_HEADER,
    ORIGINAL_SIZE_HEADER,
    REASON_HEADER,
    SOURCE_HEADER,
)
from featurepipe.stream.produce import ensure_topics

LEDGER_SUFFIX = ".replays"
REPLAY_ID_HEADER = "featurepipe-replay-id"
REPLAY_OF_HEADER = "featurepipe-replay-of"
IDLE_MS = 1000
GAP_RETRIES = 3
PATIENCE_S = 20.0  # how long a reader waits for offsets the broker reported but does not send
ROUND = 5_000  # dead letters per replay round
ROUND_BYTES = 64 << 20  # ... and payload bytes
NO_HEADERS = "(not a featurepipe dead letter)"
FILTER_MAX_CHARS = 200


class DeadLetterError(FeaturepipeError):
    """A dead-letter topic that cannot be read, or dead letters that cannot be replayed."""


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic`` (a name already ending in ``.dlq`` is one)."""
    return topic if topic.endswith(DLQ_SUFFIX) else topic + DLQ_SUFFIX


def ledger_topic(dlq: str) -> str:
    return dlq + LEDGER_SUFFIX


# -- reading a topic to its end --------------------------------------------------------------
@dataclass
class Gap:
    topic: str
    partition: int
    missing_from: int
    resumed_at: int | None  # the offset the broker answered with; None: it sent nothing more

    def __str__(self) -> str:
        end = "the end" if self.resumed_at is None else f"{self.resumed_at - 1}"
        return (
            f"{self.topic} partition {self.partition}: offsets {self.missing_from}..{end} "
            "not received"
        )


class TopicReader:
    """The records of every partition of ``topic`` from ``start`` (default: the first offset
    held) to the end, in offset order within each partition.

    ``stop_at_gaps``: a partition whose offsets jump even after ``GAP_RETRIES`` reads stops
    before the jump (``next`` stays at the first missing offset); otherwise the jump is taken.
    Either way ``gaps`` lists them."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        start: dict[int, int] | None = None,
        *,
        stop_at_gaps: bool = False,
        idle_ms: int = IDLE_MS,
        patience_s: float = PATIENCE_S,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.start = dict(start or {})
        self.stop_at_gaps = stop_at_gaps
        self.idle_ms = idle_ms
        self.patience_s = patience_s
        self.next: dict[int, int] = {}
        self.ends: dict[int, int] = {}
        self.gaps: list[Gap] = []
        self.exists = True

    def __iter__(self) -> Iterator[Any]:
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
            **kafka_security(),
        )
        try:
            yield from self._read(consumer)
        finally:
            consumer.close()

    def _read(self, consumer: KafkaConsumer) -> Iterator[Any]:
        if self.topic not in consumer.topics():
            self.exists = False
            return
        parts = sorted(consumer.partitions_for_topic(self.topic) or ())
        tps = {p: TopicPartition(self.topic, p) for p in parts}
        first = consumer.beginning_offsets(list(tps.values()))
        self.ends = {
            tp.partition: int(o) for tp, o in consumer.end_offsets(list(tps.values())).items()
        }
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            self.next[p] = max(self.start.get(p, 0), int(first[tp]))
            consumer.seek(tp, self.next[p])
        retries: Counter[int] = Counter()
        stopped: set[int] = set()
        last_progress = time.monotonic()
        while True:
            polled = consumer.poll(timeout_ms=self.idle_ms)
            got = sought = False
            for tp, records in sorted(polled.items(), key=lambda kv: kv[0].partition):
                p = tp.partition
                if p in stopped:
                    continue
                for r in records:
                    if r.offset < self.next[p]:
                        continue  # read again after a seek back
                    if r.offset > self.next[p]:
                        if retries[p] < GAP_RETRIES:
                            retries[p] += 1
                            consumer.seek(tp, self.next[p])
                            sought = True
                            break
                        self.gaps.append(Gap(self.topic, p, self.next[p], r.offset))
                        if self.stop_at_gaps:
                            stopped.add(p)
                            consumer.pause(tp)
                            break
                    retries[p] = 0
                    got = True
                    self.next[p] = r.offset + 1
                    yield r
            if got or sought:
                last_progress = time.monotonic() if got else last_progress
                continue
            short = [p for p in parts if p not in stopped and self.next[p] < self.ends.get(p, 0)]
            if not short:
                return
            if time.monotonic() - last_progress > self.patience_s:
                self.gaps.extend(Gap(self.topic, p, self.next[p], None) for p in short)
                return
            for p in short:  # the broker reported more than it sent: ask again
                consumer.seek(tps[p], self.next[p])


def topic_exists(bootstrap: str, topic: str) -> bool:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **kafka_security()
    )
    try:
        return topic in consumer.topics()
    finally:
        consumer.close()


# -- dead letters ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Letter:
    """One message of a dead-letter topic, its featurepipe headers decoded."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    reason: str
    category: str
    source: str | None  # "<topic>/<partition>/<offset>" of the original message
    original_size: int | None  # -1: the original had no value
    original_key_size: int | None  # only when the key was cut

    @classmethod
    def of(cls, record: Any) -> Letter:
        headers: dict[str, str] = {}
        for k, v in record.headers or ():
            headers[k] = (v or b"").decode("utf-8", errors="replace")
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=int(record.timestamp or 0),
            key=record.key,
            value=record.value,
            reason=headers.get(REASON_HEADER, ""),
            category=headers.get(CATEGORY_HEADER, NO_HEADERS),
            source=headers.get(SOURCE_HEADER),
            original_size=_int(headers.get(ORIGINAL_SIZE_HEADER)),
            original_key_size=_int(headers.get(ORIGINAL_KEY_SIZE_HEADER)),
        )

    @property
    def source_topic(self) -> str | None:
        return None if self.source is None else self.source.rsplit("/", 2)[0]

    @property
    def source_position(self) -> tuple[int, int] | None:
        if self.source is None:
            return None
        parts = self.source.rsplit("/", 2)
        try:
            return int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            return None

    @property
    def truncated(self) -> bool:
        """The dead letter holds less than the original: its value or its key was cut."""
        size = len(self.value or b"")
        return self.original_key_size is not None or (
            self.original_size is not None and self.original_size > size
        )

    @property
    def why_not_replayable(self) -> str | None:
        if self.source_topic is None:
            return "no featurepipe headers: the original topic is unknown"
        if self.original_size == -1:
            return "the original message had no value"
        if self.truncated:
            return "cut to fit the dead-letter topic: the original is not kept whole"
        return None

    def matches(self, reason: str | None) -> bool:
        if reason is None:
            return True
        wanted = reason.casefold()
        return self.category.casefold() == wanted or wanted in self.reason.casefold()

    def position(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    def to_json(self, *, replayed: bool | None = None) -> dict[str, Any]:
        value: str | None = None
        if self.value is not None:
            value = self.value.decode("utf-8", errors="replace")
        src = self.source_position
        out: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat(),
            "key": None if self.key is None else self.key.decode("utf-8", errors="replace"),
            "category": self.category,
            "reason": self.reason,
            "source": None
            if src is None
            else {"topic": self.source_topic, "partition": src[0], "offset": src[1]},
            "size": len(self.value or b""),
            "original_size": self.original_size,
            "truncated": self.truncated,
            "replayable": self.why_not_replayable is None,
            "value": value,
        }
        if replayed is not None:
            out["replayed"] = replayed
        return out


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def read_letters(
    bootstrap: str, dlq: str, start: dict[int, int] | None = None, *, stop_at_gaps: bool = False
) -> tuple[TopicReader, Iterator[Letter]]:
    reader = TopicReader(bootstrap, dlq, start, stop_at_gaps=stop_at_gaps)
    return reader, (Letter.of(r) for r in reader)


# -- the replay record -----------------------------------------------------------------------
@dataclass
class Ledger:
    """What ``<dlq>.replays`` says: which dead letters are handled, which rounds are pending."""

    dlq: str
    unfiltered: dict[int, int] = field(default_factory=dict)  # partition -> read up to
    filtered: dict[str, dict[int, int]] = field(default_factory=dict)  # filter -> partition -> ..
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> begin record
    records: int = 0
    gaps: list[Gap] = field(default_factory=list)  # records the broker did not send

    def apply(self, rec: dict[str, Any]) -> None:
        self.records += 1
        rid = str(rec.get("id"))
        if rec.get("state") == "begin":
            self.pending[rid] = rec
            return
        if rec.get("state") != "done":
            return
        self.pending.pop(rid, None)
        upto = {int(p): int(o) for p, o in (rec.get("upto") or {}).items()}
        flt = rec.get("filter")
        target = self.unfiltered if flt is None else self.filtered.setdefault(str(flt), {})
        for p, o in upto.items():
            target[p] = max(target.get(p, 0), o)

    def handled(self, letter: Letter) -> bool:
        p, o = letter.partition, letter.offset
        if o < self.unfiltered.get(p, 0):
            return True
        return any(
            o < upto.get(p, 0) and letter.matches(flt) for flt, upto in self.filtered.items()
        )


def read_ledger(bootstrap: str, dlq: str) -> Ledger:
    ledger = Ledger(dlq)
    reader = TopicReader(bootstrap, ledger_topic(dlq))
    for r in reader:
        try:
            rec = json.loads(r.value)
        except (TypeError, ValueError):
            continue
        if isinstance(rec, dict):
            ledger.apply(rec)
    ledger.gaps = reader.gaps
    return ledger


def _whole(ledger: Ledger) -> Ledger:
    """``ledger``, refused if part of it could not be read (a replay would then send again
    dead letters that a missing record says were sent)."""
    if ledger.gaps:
        raise DeadLetterError(
            f"could not read all of {ledger_topic(ledger.dlq)} ("
            + "; ".join(str(g) for g in ledger.gaps)
            + "): nothing replayed, as the missing records may say what was replayed; try again"
        )
    return ledger


# -- list ------------------------------------------------------------------------------------
@dataclass
class CategoryCount:
    category: str
    count: int = 0
    replayed: int = 0  # handled by a replay (replayable ones)
    not_replayable: int = 0
    first: tuple[int, int] | None = None  # (partition, offset)
    last: tuple[int, int] | None = None


@dataclass
class Summary:
    topic: str  # the dead-letter topic
    exists: bool
    letters: int = 0
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)  # p -> (first, last)
    categories: dict[str, CategoryCount] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def pos(x: tuple[int, int] | None) -> dict[str, int] | None:
            return None if x is None else {"partition": x[0], "offset": x[1]}

        return {
            "topic": self.topic,
            "exists": self.exists,
            "letters": self.letters,
            "partitions": {
                str(p): {"first": a, "last": b} for p, (a, b) in sorted(self.partitions.items())
            },
            "categories": [
                {
                    "category": c.category,
                    "count": c.count,
                    "replayed": c.replayed,
                    "not_replayable": c.not_replayable,
                    "first": pos(c.first),
                    "last": pos(c.last),
                }
                for c in sorted(self.categories.values(), key=lambda c: (-c.count, c.category))
            ],
            "unread": [str(g) for g in self.gaps],
        }


def summarize(bootstrap: str, dlq: str) -> Summary:
    """Dead letters of ``dlq`` counted by category, with first and last positions."""
    ledger = read_ledger(bootstrap, dlq)
    reader, letters = read_letters(bootstrap, dlq)
    summary = Summary(dlq, exists=True)
    for letter in letters:
        summary.letters += 1
        p, o = letter.partition, letter.offset
        first, _ = summary.partitions.get(p, (o, o))
        summary.partitions[p] = (first, o)
        c = summary.categories.get(letter.category)
        if c is None:
            c = summary.categories[letter.category] = CategoryCount(letter.category)
        c.count += 1
        if letter.why_not_replayable is not None:
            c.not_replayable += 1
        elif ledger.handled(letter):
            c.replayed += 1
        if c.first is None:
            c.first = (p, o)
        c.last = (p, o)
    summary.exists = reader.exists
    summary.gaps = reader.gaps + ledger.gaps
    return summary


# -- show ------------------------------------------------------------------------------------
@dataclass
class Shown:
    letters: list[tuple[Letter, bool]]  # (letter, replayed)
    matched: int
    exists: bool
    gaps: list[Gap]


def show(bootstrap: str, dlq: str, *, reason: str | None = None, limit: int = 20) -> Shown:
    """The first ``limit`` dead letters (by partition, then offset) matching ``reason``."""
    ledger = read_ledger(bootstrap, dlq)
    reader, letters = read_letters(bootstrap, dlq)
    kept: dict[int, list[Letter]] = {}
    matched = 0
    for letter in letters:
        if not letter.matches(reason):
            continue
        matched += 1
        part = kept.setdefault(letter.partition, [])
        if len(part) < limit:
            part.append(letter)
    ordered = sorted((x for part in kept.values() for x in part), key=lambda x: x.partition)
    return Shown(
        [(x, ledger.handled(x)) for x in ordered[:limit]],
        matched,
        reader.exists,
        reader.gaps + ledger.gaps,
    )


# -- replay ----------------------------------------------------------------------------------
@dataclass
class ReplayReport:
    dlq: str
    replayed: Counter[str] = field(default_factory=Counter)  # category -> sent now
    resumed: int = 0  # sent to complete an interrupted replay
    already: int = 0  # matched, replayed before
    not_replayable: Counter[str] = field(default_factory=Counter)  # why -> count
    not_matching: int = 0
    targets: set[str] = field(default_factory=set)
    gaps: list[Gap] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.replayed.values())


class _Sender:
    """Sends replayed dead letters and ledger records, each send confirmed."""

    def __init__(self, bootstrap: str, dlq: str) -> None:
        self.bootstrap = bootstrap
        self.dlq = dlq
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            max_request_size=MAX_DEAD_LETTER_BYTES * 2,
            **kafka_security(),
        )

    def close(self) -> None:
        self.producer.close()

    def record(self, rec: dict[str, Any]) -> None:
        rec = {**rec, "at": datetime.now(UTC).isoformat()}
        future = self.producer.send(ledger_topic(self.dlq), value=json.dumps(rec).encode())
        try:
            future.get(timeout=30)
        except KafkaError as e:
            raise DeadLetterError(
                f"could not record the replay in {ledger_topic(self.dlq)}: {e}"
            ) from None

    def send(self, rid: str, letters: list[Letter]) -> None:
        futures = []
        for x in letters:
            headers = [
                (REPLAY_ID_HEADER, rid.encode()),
                (REPLAY_OF_HEADER, x.position().encode()),
            ]
            assert x.source_topic is not None
            try:
                futures.append(
                    self.producer.send(x.source_topic, key=x.key, value=x.value, headers=headers)
                )
            except KafkaError as e:
                raise DeadLetterError(f"could not replay {x.position()}: {e}") from None
        try:
            self.producer.flush(timeout=60)
        except KafkaError as e:
            raise DeadLetterError(
                f"replayed dead letters not acknowledged within 60s ({e}); the round stays "
                "open: run `replay` again to send the missing ones"
            ) from None
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            raise DeadLetterError(
                f"{len(failed)} of {len(futures)} replayed dead letters were not acknowledged "
                f"({failed[0].exception}); the round stays open: run `replay` again to send "
                "the missing ones (the ones the broker has are not sent twice)"
            )

    def ends(self, topics: set[str]) -> dict[str, dict[str, int]]:
        """The end offsets of ``topics`` (a lower bound on some brokers: fine for a scan start)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            **kafka_security(),
        )
        try:
            known = consumer.topics()
            out: dict[str, dict[str, int]] = {}
            for t in sorted(topics):
                if t not in known:
                    raise DeadLetterError(
                        f"the dead letters of {self.dlq} came from topic '{t}', which does not "
                        "exist any more: create it (featurepipe produce creates it) and replay again"
                    )
                tps = [TopicPartition(t, p) for p in sorted(consumer.partitions_for_topic(t))]
                out[t] = {str(tp.partition): int(o) for tp, o in consumer.end_offsets(tps).items()}
            return out
        finally:
            consumer.close()


def _sent_by(bootstrap: str, begin: dict[str, Any]) -> set[str]:
    """Positions (``<dlq>/<p>/<o>``) of the dead letters a round already sent: the messages of
    its target topics, from the ends it recorded, that carry its id."""
    rid = str(begin["id"]).encode()
    found: set[str] = set()
    for topic, ends in (begin.get("targets") or {}).items():
        start = {int(p): int(o) for p, o in ends.items()}
        reader = TopicReader(bootstrap, topic, start)
        for r in reader:
            headers = dict(r.headers or ())
            if headers.get(REPLAY_ID_HEADER) == rid:
                found.add(headers.get(REPLAY_OF_HEADER, b"").decode())
        if reader.gaps:
            raise DeadLetterError(
                f"an interrupted replay (round {begin['id']}) cannot be completed: part of "
                f"{topic} could not be read ("
                + "; ".join(str(g) for g in reader.gaps)
                + "), so what it sent is not known; nothing replayed, try again"
            )
    return found


def replay(
    bootstrap: str,
    dlq: str,
    *,
    reason: str | None = None,
    round_size: int = ROUND,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Send the dead letters of ``dlq`` not replayed before (those matching ``reason``) to the
    topic each came from, keyed as it was; see the module's docstring for the record kept.

    The dead-letter topic is read from its first offset every time (the counts of what was
    replayed before are exact); a round holds at most ``round_size`` dead letters and
    ``ROUND_BYTES`` of payload."""
    if reason is not None and (not reason.strip() or len(reason) > FILTER_MAX_CHARS):
        raise DeadLetterError(
            f"--reason must be non-empty text of at most {FILTER_MAX_CHARS} characters"
        )
    if not topic_exists(bootstrap, dlq):
        raise DeadLetterError(f"topic {dlq} does not exist: no dead letter was written yet")
    t0 = time.perf_counter()
    report = ReplayReport(dlq)
    ensure_topics(bootstrap, {ledger_topic(dlq): 1})
    ledger = _whole(read_ledger(bootstrap, dlq))
    sender = _Sender(bootstrap, dlq)
    sent_total = 0
    try:
        for rid, begin in list(ledger.pending.items()):
            report.resumed += _complete(bootstrap, dlq, ledger, sender, rid, begin, report)
        reader, letters = read_letters(bootstrap, dlq, stop_at_gaps=True)
        batch: list[Letter] = []
        size = 0
        dirty = False  # the round read a matching dead letter it handled without sending it
        for letter in letters:
            if not letter.matches(reason):
                report.not_matching += 1
                continue
            if ledger.handled(letter):
                report.already += 1
                continue
            why = letter.why_not_replayable
            if why is not None:
                report.not_replayable[why] += 1
                dirty = True
                continue
            batch.append(letter)
            size += len(letter.value or b"")
            if len(batch) >= round_size or size >= ROUND_BYTES:
                sent_total += _round(sender, ledger, reason, dict(reader.next), batch, report)
                if progress is not None:
                    progress(sent_total)
                batch, size, dirty = [], 0, False
        upto = dict(reader.next)
        if (
            batch
            or dirty
            or (reason is None and any(o > ledger.unfiltered.get(p, 0) for p, o in upto.items()))
        ):
            sent_total += _round(sender, ledger, reason, upto, batch, report)
        if progress is not None:
            progress(sent_total)
        report.gaps = reader.gaps
    finally:
        sender.close()
    report.seconds = time.perf_counter() - t0
    return report


def _round(
    sender: _Sender,
    ledger: Ledger,
    reason: str | None,
    upto: dict[int, int],
    batch: list[Letter],
    report: ReplayReport,
) -> int:
    rid = uuid.uuid4().hex
    upto_json = {str(p): o for p, o in upto.items()}
    done = {"id": rid, "state": "done", "filter": reason, "upto": upto_json}
    if batch:
        targets = {x.source_topic for x in batch if x.source_topic is not None}
        begin = {
            "id": rid,
            "state": "begin",
            "filter": reason,
            "upto": upto_json,
            "targets": sender.ends(targets),
        }
        sender.record(begin)
        sender.send(rid, batch)
        report.targets |= targets
    sender.record({**done, "replayed": len(batch)})
    ledger.apply(done)
    for x in batch:
        report.replayed[x.category] += 1
    return len(batch)


def _complete(
    bootstrap: str,
    dlq: str,
    ledger: Ledger,
    sender: _Sender,
    rid: str,
    begin: dict[str, Any],
    report: ReplayReport,
) -> int:
    """Finish a round interrupted after ``begin``: send what it had not sent yet."""
    flt = begin.get("filter")
    flt = None if flt is None else str(flt)
    upto = {int(p): int(o) for p, o in (begin.get("upto") or {}).items()}
    sent = _sent_by(bootstrap, begin)
    _, letters = read_letters(bootstrap, dlq, stop_at_gaps=True)
    missing = [
        x
        for x in letters
        if x.offset < upto.get(x.partition, 0)
        and x.matches(flt)
        and not ledger.handled(x)
        and x.why_not_replayable is None
        and x.position() not in sent
    ]
    if missing:
        sender.send(rid, missing)
        report.targets |= {x.source_topic for x in missing if x.source_topic is not None}
    done = {"id": rid, "state": "done", "filter": flt, "upto": begin.get("upto") or {}}
    sender.record({**done, "replayed": len(sent) + len(missing), "completed": True})
    ledger.apply(done)
    for x in missing:
        report.replayed[x.category] += 1
    return len(missing)
