"""The stream worker's Kafka consumer, behind one small interface, with two clients.

``kafka-python`` (pure Python, the default) and ``confluent`` (confluent-kafka over librdkafka,
the optional extra ``featurepipe[confluent]``: decoding and fetching happen in C on librdkafka's
threads, so the worker's own thread keeps the GIL). The worker, the start-position checks and
the tests use only ``WorkerConsumer``; both clients give the same records (key, value, offset,
timestamp in ms), so the digests the worker stores are the same whichever client wrote them and
a group may switch clients between runs.

Both clients run with auto-commit off and no automatic offset reset: every position comes from
the online store (``positions``), and a position the broker no longer holds raises
``PositionOutOfRange`` instead of silently starting elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from kafka import TopicPartition

from featurepipe.settings import KAFKA_CLIENTS, kafka_security
from featurepipe.stream.errors import StreamError

log = logging.getLogger("featurepipe.stream")

__all__ = [
    "CLIENTS",
    "PositionOutOfRange",
    "Record",
    "WorkerConsumer",
    "open_consumer",
]

CLIENTS = KAFKA_CLIENTS

# How long the broker may hold a fetch waiting for data. Clients default to 500 ms, which some
# Kafka-protocol brokers wait out in full even when events arrive: freshness. A backlog is
# unaffected (a fetch returns at once when data is there).
_FETCH_WAIT_MS = 50

Assigned = Callable[[list[TopicPartition]], None]


class PositionOutOfRange(Exception):
    """A position the broker no longer holds (recreated topic, reset broker, retention)."""


class Record:
    """One consumed message as the worker reads it (kafka-python's ConsumerRecord has the same
    attributes, so its records are used as they are)."""

    __slots__ = ("key", "offset", "partition", "timestamp", "value")

    def __init__(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp: int | None,
    ) -> None:
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.timestamp = timestamp


class WorkerConsumer(Protocol):
    """What the worker needs of a Kafka consumer (kafka-python's names and shapes)."""

    def subscribe(self, topics: list[str], on_assigned: Assigned, on_revoked: Assigned) -> None:
        """Newly assigned partitions are paused (nothing is fetched) until the worker seeks and
        resumes them; the callbacks run inside ``poll``."""

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]: ...
    def seek(self, tp: TopicPartition, offset: int) -> None: ...
    def pause(self, *tps: TopicPartition) -> None: ...
    def resume(self, *tps: TopicPartition) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    def committed(self, tp: TopicPartition) -> int | None: ...
    def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]: ...
    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]: ...
    def partitions_for_topic(self, topic: str) -> set[int] | None: ...
    def position(self, tp: TopicPartition) -> int | None: ...
    def lag(self, tps: list[TopicPartition]) -> int:
        """Events behind the broker's end, for monitoring (cheap: may use cached ends)."""

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...
    def close(self) -> None: ...


def open_consumer(client: str, bootstrap: str, group: str, max_batch: int) -> WorkerConsumer:
    """A consumer of ``client`` (one of ``CLIENTS``) for the worker's group."""
    if client == "kafka-python":
        return KafkaPythonConsumer(bootstrap, group, max_batch)
    if client == "confluent":
        return ConfluentConsumer(bootstrap, group, max_batch)
    raise StreamError(f"unknown Kafka client '{client}' (choose one of: {', '.join(CLIENTS)})")


class KafkaPythonConsumer:
    """kafka-python's KafkaConsumer, nearly as it is."""

    def __init__(self, bootstrap: str, group: str, max_batch: int) -> None:
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            # never reset a position silently: every partition is positioned from the store,
            # and a position the broker no longer holds raises (OffsetOutOfRangeError)
            auto_offset_reset="none",
            max_poll_records=max_batch,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=8 << 20,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            fetch_max_wait_ms=_FETCH_WAIT_MS,
            **kafka_security(),
        )

    def subscribe(self, topics: list[str], on_assigned: Assigned, on_revoked: Assigned) -> None:
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        consumer = self._consumer

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                on_revoked(list(revoked))

            def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                if assigned:
                    # a provisional position: no fetch happens while paused
                    consumer.seek_to_beginning(*assigned)
                    consumer.pause(*assigned)
                on_assigned(list(assigned))

        self._consumer.subscribe(topics, listener=Listener())

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        from kafka.errors import OffsetOutOfRangeError

        try:
            return self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)  # type: ignore[no-any-return]
        except OffsetOutOfRangeError as e:
            raise PositionOutOfRange(str(e)) from None

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(tp, offset)

    def pause(self, *tps: TopicPartition) -> None:
        self._consumer.pause(*tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._consumer.resume(*tps)

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment())

    def committed(self, tp: TopicPartition) -> int | None:
        return self._consumer.committed(tp)  # type: ignore[no-any-return]

    def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict(self._consumer.beginning_offsets(tps))

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict(self._consumer.end_offsets(tps))

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._consumer.partitions_for_topic(topic)  # type: ignore[no-any-return]

    def position(self, tp: TopicPartition) -> int | None:
        return self._consumer.position(tp)  # type: ignore[no-any-return]

    def lag(self, tps: list[TopicPartition]) -> int:
        ends = self._consumer.end_offsets(tps)
        positions = {tp: self._consumer.position(tp) for tp in tps}
        return sum(max(ends[tp] - p, 0) for tp, p in positions.items() if p is not None)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        self._consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})

    def close(self) -> None:
        self._consumer.close(autocommit=False)


# kafka-python's security settings (featurepipe.settings.kafka_security) in librdkafka's names
_LIBRDKAFKA_NAMES = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
}


def librdkafka_security() -> dict[str, str]:
    """The SASL/TLS settings of the environment (``kafka_security``) in librdkafka's names."""
    return {_LIBRDKAFKA_NAMES[name]: str(value) for name, value in kafka_security().items()}


_TIMEOUT_S = 10.0  # metadata and offset queries
_CONSUME_MAX = 1_000_000  # the most messages confluent-kafka's consume() returns at once
_SEEK_TRIES = 50  # librdkafka refuses a seek until a new assignment has started fetching


class ConfluentConsumer:
    """confluent-kafka's Consumer behind the worker's interface.

    A new assignment is assigned at the beginning and paused inside the rebalance callback
    (so nothing is fetched before the worker positions it); records are grouped per partition
    in arrival order, as kafka-python returns them.
    """

    def __init__(self, bootstrap: str, group: str, max_batch: int) -> None:
        try:
            import confluent_kafka
        except ImportError:
            raise StreamError(
                "the Kafka client 'confluent' needs confluent-kafka: "
                "pip install 'featurepipe[confluent]'"
            ) from None
        self._ck: Any = confluent_kafka
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # no silent reset: a position outside the partition is an error record
            "auto.offset.reset": "error",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": _FETCH_WAIT_MS,
            "fetch.max.bytes": 64 << 20,
            "max.partition.fetch.bytes": 8 << 20,
            "logger": logging.getLogger("featurepipe.kafka"),
        }
        config |= librdkafka_security()
        # Any: newer confluent-kafka releases ship type hints, older ones none
        self._consumer: Any = confluent_kafka.Consumer(config)
        self._max_batch = max_batch

    def _tp(self, tp: TopicPartition, offset: int | None = None) -> Any:
        if offset is None:
            return self._ck.TopicPartition(tp.topic, tp.partition)
        return self._ck.TopicPartition(tp.topic, tp.partition, offset)

    def subscribe(self, topics: list[str], on_assigned: Assigned, on_revoked: Assigned) -> None:
        ck = self._ck

        def assign(consumer: Any, parts: list[Any]) -> None:
            start = [ck.TopicPartition(p.topic, p.partition, ck.OFFSET_BEGINNING) for p in parts]
            consumer.assign(start)
            consumer.pause(start)
            on_assigned([TopicPartition(p.topic, p.partition) for p in parts])

        def revoke(consumer: Any, parts: list[Any]) -> None:
            on_revoked([TopicPartition(p.topic, p.partition) for p in parts])
            consumer.unassign()

        self._consumer.subscribe(topics, on_assign=assign, on_revoke=revoke, on_lost=revoke)

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        # What is already fetched, at once; else wait for the first message only, as
        # kafka-python does (consume() would wait the whole timeout for a full batch: latency)
        limit = max(1, min(max_records, self._max_batch, _CONSUME_MAX))
        messages = self._consumer.consume(num_messages=limit, timeout=0)
        if not messages:
            first = self._consumer.poll(timeout_ms / 1000)
            if first is None:
                return {}
            more = self._consumer.consume(num_messages=limit - 1, timeout=0) if limit > 1 else []
            messages = [first, *more]
        out: dict[TopicPartition, list[Any]] = {}
        last: tuple[str, int] | None = None
        batch: list[Any] = []
        not_available = self._ck.TIMESTAMP_NOT_AVAILABLE
        for m in messages:
            error = m.error()
            if error is not None:
                self._raise_or_log(error, m)
                continue
            where = (m.topic(), m.partition())
            if where != last:
                batch = out.setdefault(TopicPartition(*where), [])
                last = where
            kind, ts = m.timestamp()
            batch.append(
                Record(
                    where[1], m.offset(), m.key(), m.value(), None if kind == not_available else ts
                )
            )
        return out

    def _raise_or_log(self, error: Any, m: Any) -> None:
        codes = self._ck.KafkaError
        if error.code() in (codes.OFFSET_OUT_OF_RANGE, codes._AUTO_OFFSET_RESET):
            raise PositionOutOfRange(f"{m.topic()}[{m.partition()}]: {error.str()}")
        if error.code() == codes._PARTITION_EOF:
            return
        if error.fatal():
            raise StreamError(f"Kafka client error: {error.str()}")
        log.warning("Kafka client: %s", error.str())  # transient: librdkafka retries itself

    def seek(self, tp: TopicPartition, offset: int) -> None:
        target = self._tp(tp, offset)
        for attempt in range(_SEEK_TRIES):
            try:
                self._consumer.seek(target)
                return
            except self._ck.KafkaException as e:
                if e.args[0].code() != self._ck.KafkaError._STATE or attempt == _SEEK_TRIES - 1:
                    raise StreamError(f"cannot seek {tp.topic}[{tp.partition}]: {e}") from None
                time.sleep(0.02)

    def pause(self, *tps: TopicPartition) -> None:
        if tps:
            self._consumer.pause([self._tp(tp) for tp in tps])

    def resume(self, *tps: TopicPartition) -> None:
        if tps:
            self._consumer.resume([self._tp(tp) for tp in tps])

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(p.topic, p.partition) for p in self._consumer.assignment()}

    def committed(self, tp: TopicPartition) -> int | None:
        (part,) = self._consumer.committed([self._tp(tp)], timeout=_TIMEOUT_S)
        return part.offset if part.offset >= 0 else None

    def _watermarks(self, tps: Iterable[TopicPartition], index: int) -> dict[TopicPartition, int]:
        return {
            tp: self._consumer.get_watermark_offsets(self._tp(tp), timeout=_TIMEOUT_S)[index]
            for tp in tps
        }

    def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return self._watermarks(tps, 0)

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return self._watermarks(tps, 1)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        meta = self._consumer.list_topics(topic, timeout=_TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None:
            return None
        return set(meta.partitions)

    def position(self, tp: TopicPartition) -> int | None:
        (part,) = self._consumer.position([self._tp(tp)])
        return part.offset if part.offset >= 0 else None

    def lag(self, tps: list[TopicPartition]) -> int:
        # the high watermarks every fetch response carries: no broker round trip (a query per
        # partition would stall the fetcher)
        total = 0
        for part in self._consumer.position([self._tp(tp) for tp in tps]):
            _, high = self._consumer.get_watermark_offsets(part, cached=True)
            if part.offset >= 0 and high >= 0:
                total += max(high - part.offset, 0)
        return total

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if offsets:
            self._consumer.commit(
                offsets=[self._tp(tp, o) for tp, o in offsets.items()], asynchronous=False
            )

    def close(self) -> None:
        self._consumer.close()
