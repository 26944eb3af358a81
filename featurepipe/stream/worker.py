"""``featurepipe stream``: Kafka -> per-event evaluator -> Redis, with an exactly-once effect.

Per poll batch:

1. every message is validated against the source's pydantic contract; invalid ones go to
   ``<topic>.dlq`` with the reason and the original bytes (``dead_letters``);
2. states of the batch's entities not yet cached are read from Redis in one round trip;
3. valid events are ingested in partition order (seq = the Kafka offset), skipping events
   before the view's materialize cut-over;
4. the touched states *and the next offsets of every partition in the batch* are committed
   together, compare-and-set (``checkpoint``). A (re)started worker seeks each assigned
   partition to the offset stored in Redis, so a crash anywhere loses nothing and counts
   nothing twice. Kafka's own committed offsets are updated afterwards for lag monitoring only.

Redis or Kafka outages are retried with capped exponential backoff (``retry``); SIGTERM stops
after the batch in flight. Counters are served to Prometheus on request (``metrics``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer, TopicPartition

from featurepipe.compile.python_state import collector_paused
from featurepipe.dsl.loader import Definitions
from featurepipe.online.state_store import DEFAULT_PREFIX, Client, Partition, open_store
from featurepipe.settings import kafka_client, kafka_security
from featurepipe.stream.checkpoint import Checkpoint, EntityKey, Quarantine
from featurepipe.stream.consumers import PositionOutOfRange, WorkerConsumer, open_consumer
from featurepipe.stream.dead_letters import (
    INGEST_ERROR,
    MAX_DEAD_LETTER_BYTES,
    QUARANTINED,
    STATE_TOO_LARGE,
    UNEXPECTED,
    WRONG_PARTITION,
    DeadLetter,
    DeadLetterPublisher,
)
from featurepipe.stream.errors import StreamError
from featurepipe.stream.metrics import Counters, WorkerMetrics
from featurepipe.stream.plans import TopicPlan, ViewPlan, plan_topics
from featurepipe.stream.positions import RECOVER, StartPositions, message_digest
from featurepipe.stream.retry import Backoff
from featurepipe.stream.validate import MAX_EVENT_BYTES, Invalid

log = logging.getLogger("featurepipe.stream")

__all__ = ["Counters", "StreamError", "StreamWorker", "WorkerConfig"]

_FRESHNESS_SAMPLES = 200  # per batch: the newest events stand for it
_LAG_EVERY_S = 2.0


# messages off their key's partition make the worker ask the broker for the topic's partition
# count at most this often (seconds), waiting at most this long for the answer
RECOUNT_S = 30.0
RECOUNT_TIMEOUT_S = 15.0


@dataclass
class WorkerConfig:
    bootstrap: str
    group_id: str = "featurepipe"
    prefix: str = DEFAULT_PREFIX
    max_batch: int = 100_000  # events per poll and per Redis transaction (a backlog amortizes
    # the per-entity read, encode and write over more events; a steady stream polls what came)
    poll_timeout_ms: int = 200
    max_event_bytes: int = MAX_EVENT_BYTES
    metrics_port: int | None = None
    idle_exit_s: float | None = None  # stop after this long without messages (demo, tests)
    max_events: int | None = None  # stop after this many messages (tests)
    start_from: str = "earliest"  # where a group reading a topic for the first time starts
    verify_timeout_s: float = 15.0  # to read back the message before a stored position
    # the Kafka consumer (featurepipe.stream.consumers); default: FEATUREPIPE_KAFKA_CLIENT
    client: str = field(default_factory=kafka_client)


class StreamWorker:
    """Consumes every stream source of a definitions package into the online store."""

    def __init__(
        self,
        defs: Definitions,
        config: WorkerConfig,
        client: Client,
        *,
        views: list[str] | None = None,
        topics: dict[str, str] | None = None,
    ) -> None:
        """``topics`` maps source names to the topic to read instead of the declared one."""
        self.config = config
        self.plans: dict[str, TopicPlan] = plan_topics(
            defs, config.max_event_bytes, views=views, topics=topics
        )
        self.counters = Counters()
        self.metrics = WorkerMetrics(self.counters)
        self.stop_requested = threading.Event()
        self.retry = Backoff(self.stop_requested, self._count_retry)
        store = open_store(client, config.prefix)
        self.checkpoint = Checkpoint(store, config.group_id, self.retry)
        self.positions = StartPositions(
            store, config.group_id, self.plans, config.start_from, config.verify_timeout_s
        )
        self.consumer: WorkerConsumer | None = None
        self.dead_letters: DeadLetterPublisher | None = None
        self.assigned_once = False
        self.rebalancing = False  # revoked, not yet assigned again
        self.pending: set[TopicPartition] = set()  # assigned, not yet checked and positioned
        # the partitions the group gave this worker, readable from other threads (the consumer
        # itself is called from the worker's thread only: librdkafka serves rebalance callbacks
        # on the polling thread, and a call from another thread can wait on them forever)
        self.owned: frozenset[TopicPartition] = frozenset()
        self.digests: dict[Partition, str] = {}  # last message read per partition, this batch
        self.recounted: dict[str, float] = {}  # topic -> when its partitions were last counted

    # -- lifecycle ---------------------------------------------------------------------------
    def _connect(self) -> None:
        from featurepipe.stream.kafka_conn import require_broker

        # an unreachable broker is one clear error within seconds, not a client timing out
        require_broker(self.config.bootstrap, "stream worker")
        common = {"bootstrap_servers": self.config.bootstrap, **kafka_security()}
        self.consumer = open_consumer(
            self.config.client, self.config.bootstrap, self.config.group_id, self.config.max_batch
        )
        # dead letters: Kafka's default size limit, which a default broker accepts; larger
        # payloads are truncated to fit (dead_letters), so no message size stops a partition
        producer = KafkaProducer(max_request_size=MAX_DEAD_LETTER_BYTES, linger_ms=5, **common)
        self.dead_letters = DeadLetterPublisher(producer, self.retry)
        self.consumer.subscribe(list(self.plans), self.on_assigned, self.on_revoked)

    def request_stop(self, *_: Any) -> None:
        self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> Counters:
        self._load_cutovers()
        self._connect()
        assert self.consumer is not None
        if self.config.metrics_port is not None:
            self.metrics.serve(self.config.metrics_port)
        idle_since = time.monotonic()
        last_lag = 0.0
        try:
            while not self.stop_requested.is_set():
                try:
                    polled = self.consumer.poll(
                        timeout_ms=self.config.poll_timeout_ms, max_records=self.config.max_batch
                    )
                except PositionOutOfRange as e:
                    raise StreamError(
                        f"a stored position is outside the partition on the broker ({e}): the "
                        f"topic was recreated, the broker reset, or retention deleted events "
                        f"before they were applied; {RECOVER}"
                    ) from None
                if self.pending:  # outside the rebalance callback: checks may talk to Kafka
                    polled = self._position(polled)
                polled = self.positions.check(polled)
                now = time.monotonic()
                got_messages = any(polled.values())
                if (
                    got_messages
                    or not self.assigned_once
                    or self.positions.expect
                    or self.rebalancing
                ):
                    # idle time counts once partitions are assigned and positions verified, and
                    # not while the group rebalances (polls return nothing while it rejoins)
                    idle_since = now
                if got_messages:
                    self.digests = {
                        tp: message_digest(msgs[-1]) for tp, msgs in polled.items() if msgs
                    }
                    self.process(polled)
                elif (
                    self.config.idle_exit_s is not None
                    and now - idle_since > self.config.idle_exit_s
                ):
                    break
                if now - last_lag > _LAG_EVERY_S:
                    last_lag = now
                    self._update_lag()
                if (
                    self.config.max_events is not None
                    and self.counters.events >= self.config.max_events
                ):
                    break
        finally:
            self.close()
        return self.counters

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self.dead_letters is not None:
            self.dead_letters.close()
            self.dead_letters = None
        self.metrics.close()

    # -- one batch ---------------------------------------------------------------------------
    def process(self, polled: Mapping[TopicPartition, list[Any]]) -> None:
        """Validate, ingest and commit one poll batch (automatic garbage collection paused: the
        batch's events live until its commit and form no cycles, so collections during it
        would traverse every one of them for nothing; measured pauses of 200-300 ms)."""
        with collector_paused():
            self._process(polled)

    def _process(self, polled: Mapping[TopicPartition, list[Any]]) -> None:
        c = self.counters
        dead: list[DeadLetter] = []
        valid: list[tuple[TopicPlan, Any, dict[str, Any]]] = []
        next_offsets: dict[Partition, int] = {}
        first_offsets: dict[Partition, int] = {}
        keep = valid.append
        misplaced: dict[str, TopicPlan] = {}  # topics with messages off their key's partition
        for tp, msgs in polled.items():
            if not msgs:
                continue
            plan = self.plans[tp.topic]
            c.events += len(msgs)
            first_offsets[tp] = msgs[0].offset
            next_offsets[tp] = msgs[-1].offset + 1
            parse, check_key = plan.validator.parse, plan.check_key
            for m in msgs:
                try:
                    event = parse(m.value)
                    check_key(m.key, event, tp.partition)
                except Invalid as e:
                    category = plan.category(e)
                    if category == WRONG_PARTITION:
                        misplaced[plan.topic] = plan
                    dead.append(DeadLetter(tp.topic, m, e.reason, category))
                    continue
                except Exception as e:  # an input the contract check did not foresee
                    dead.append(DeadLetter(tp.topic, m, f"{type(e).__name__}: {e}", UNEXPECTED))
                    continue
                keep((plan, m, event))
        for plan in misplaced.values():  # before anything of the batch is written
            self._check_partition_count(plan)
        self._load_states(valid)
        checkpoint = self.checkpoint
        cache = checkpoint.cache
        touched: dict[EntityKey, ViewPlan] = {}
        refused = 0  # valid events dead-lettered after all (quarantined entity, ingest error)
        for plan, m, event in valid:
            failed = False
            for vp in plan.views:
                entity = event[vp.key]
                if entity is None:  # cannot be attributed; the batch path drops it too
                    c.null_entity += 1
                    continue
                ts = event[vp.view.source.timestamp]
                if vp.cutover is not None and ts < vp.cutover:
                    c.before_cutover += 1
                    continue
                ck = (vp.view.name, entity)
                state = cache.get(ck)
                if state is None:  # quarantined: its state cannot be continued
                    reason = checkpoint.quarantined[ck]
                    dead.append(
                        DeadLetter(
                            plan.topic,
                            m,
                            f"{QUARANTINED}: view '{vp.view.name}', entity {entity!r}: {reason}",
                            QUARANTINED,
                        )
                    )
                    failed = True
                    continue
                try:
                    vp.program.ingest(state, event, m.offset)
                except Exception as e:
                    # the row stage raises before the state changes: dead-letter it
                    dead.append(
                        DeadLetter(
                            plan.topic,
                            m,
                            f"view '{vp.view.name}': {type(e).__name__}: {e}",
                            INGEST_ERROR,
                        )
                    )
                    failed = True
                    continue
                touched[ck] = vp
            refused += failed
        over = checkpoint.prepare(touched)  # serializes; quarantines states over the cap
        if over:
            refused += self._dead_letter_over_cap(valid, over, dead)
        quarantines = [why.category for _, why in checkpoint.new_quarantines.values()]
        if dead:
            self._dead_letter(dead)
        if not self._commit(touched, first_offsets, next_offsets):
            return  # another worker owns these partitions now: nothing of this batch counts
        c.valid += len(valid) - refused
        c.invalid += len(dead)
        c.batches += 1
        for d in dead:
            c.count_reason(d.category)
        for category in quarantines:
            c.count_quarantined(category)
        c.cache_entities = len(cache)
        c.cache_bytes = checkpoint.cache_bytes
        c.cache_evictions = checkpoint.evictions
        now_ms = time.time() * 1000
        self.metrics.record_freshness(
            now_ms - m.timestamp for _, m, _ in valid[-_FRESHNESS_SAMPLES:] if m.timestamp
        )

    def _dead_letter_over_cap(
        self,
        valid: list[tuple[TopicPlan, Any, dict[str, Any]]],
        over: Mapping[EntityKey, Quarantine],
        dead: list[DeadLetter],
    ) -> int:
        """Dead-letter the batch's events of the entities quarantined by ``prepare`` (their
        state outgrew the cap: the store will not hold them). Returns how many messages."""
        n = 0
        for plan, m, event in valid:
            for vp in plan.views:
                entity = event[vp.key]
                ck = (vp.view.name, entity)
                if ck not in over or (
                    vp.cutover is not None and event[vp.view.source.timestamp] < vp.cutover
                ):
                    continue
                dead.append(
                    DeadLetter(
                        plan.topic,
                        m,
                        f"{STATE_TOO_LARGE}: view '{vp.view.name}', entity {entity!r}: "
                        f"{over[ck].reason}; the entity is quarantined",
                        STATE_TOO_LARGE,
                    )
                )
                n += 1
                break
        return n

    def _load_states(self, valid: list[tuple[TopicPlan, Any, dict[str, Any]]]) -> None:
        """Cache the state of every (view, entity) the batch's valid events touch."""
        wanted: dict[EntityKey, ViewPlan] = {}
        for plan, _, event in valid:
            for vp in plan.views:
                entity = event[vp.key]
                if entity is not None:
                    wanted.setdefault((vp.view.name, entity), vp)
        self.checkpoint.load(wanted)

    def _dead_letter(self, dead: list[DeadLetter]) -> None:
        """Publish (reasons are counted once the batch commits: ``process``)."""
        assert self.dead_letters is not None
        self.dead_letters.publish(dead)

    def _commit(
        self,
        touched: dict[EntityKey, ViewPlan],
        first: dict[Partition, int],
        offsets: dict[Partition, int],
    ) -> bool:
        """Commit through the checkpoint; on success mirror the offsets to Kafka (advisory)."""
        if not self.checkpoint.commit(touched, first, offsets, digests=self.digests):
            self._lost_ownership(offsets)
            return False
        self.counters.last_flush = time.time()
        if self.consumer is not None and offsets:
            try:  # advisory only: the offsets that matter are in Redis
                self.consumer.commit({TopicPartition(*tp): o for tp, o in offsets.items()})
            except Exception as e:
                log.debug("advisory offset commit failed: %s", e)
        return True

    def _lost_ownership(self, offsets: dict[Partition, int]) -> None:
        """The stored positions are not where this batch started: another worker moved them
        (a rebalance), or the store was rolled back. Nothing of the batch was written and the
        cache is dropped; every partition still owned is positioned again from the store,
        with the same checks as at assignment (which refuse a store that lost positions)."""
        log.warning("stored positions moved under this batch (%s): repositioning", list(offsets))
        if self.consumer is None:
            return
        owned = [tp for tp in self.consumer.assignment() if (tp.topic, tp.partition) in offsets]
        self.pending.update(owned)
        self.consumer.pause(*owned)

    def _check_partition_count(self, plan: TopicPlan) -> None:
        """Messages not on their key's partition: a producer with another partitioner (they
        are dead-lettered), or the topic gained partitions and producers already route by the
        new count. Asked of the broker (fresh metadata; at most once per ``RECOUNT_S`` per
        topic, bounded by ``RECOUNT_TIMEOUT_S``): a new count stops the worker before this
        batch commits, since the store's layout no longer finds the entities that moved. An
        answer that does not come in time counts as unchanged (logged): the messages stay in
        the dead-letter topic, from which they can be replayed."""
        now = time.monotonic()
        if now - self.recounted.get(plan.topic, -1e9) < RECOUNT_S:
            return
        from featurepipe.stream.recover import partition_starts

        answer: list[int] = []
        failed: list[BaseException] = []

        def ask() -> None:
            try:
                answer.append(len(partition_starts(self.config.bootstrap, [plan.topic])))
            except Exception as e:  # reported below; the worker goes on
                failed.append(e)

        asking = threading.Thread(target=ask, name="featurepipe-recount", daemon=True)
        asking.start()
        asking.join(RECOUNT_TIMEOUT_S)
        self.recounted[plan.topic] = time.monotonic()
        if not answer:
            why = failed[0] if failed else f"no answer in {RECOUNT_TIMEOUT_S:g} s"
            log.warning("cannot count the partitions of %s (%s): dead-lettering", plan.topic, why)
            return
        if answer[0] != plan.partitions:
            raise StreamError(
                f"topic '{plan.topic}' now has {answer[0]} partitions; the online store (a "
                f"Redis Cluster, kept by partition) is laid out for {plan.partitions}: entities "
                "moved partition. Rebuild the store for the new count under a new prefix: "
                "`featurepipe recover --until <cut-over> --prefix <new prefix>`"
            )

    def _count_retry(self) -> None:
        self.counters.flush_retries += 1

    # -- offsets and cut-over ----------------------------------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """Hold new partitions (the consumer delivers them paused) until the run loop has
        checked and positioned them."""
        self.pending.update(partitions)
        self.owned = self.owned | frozenset(partitions)
        self.assigned_once = True
        self.rebalancing = False
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        # another worker may own these entities next: never serve from a stale cache
        self.rebalancing = True  # until the next assignment (maybe of nothing)
        self.checkpoint.drop_cache()
        self.pending.difference_update(partitions)
        self.owned = self.owned - frozenset(partitions)

    def _position(
        self, polled: Mapping[TopicPartition, list[Any]]
    ) -> dict[TopicPartition, list[Any]]:
        """Check and seek the pending partitions (``positions``); records polled for them
        before that are dropped (the seek rewinds to what the store says)."""
        assert self.consumer is not None
        owned = self.consumer.assignment()
        pending = sorted(tp for tp in self.pending if tp in owned)
        self.pending.clear()
        if pending:
            self.positions.bind_generation(self.consumer, pending)
            for tp, offset in self.positions.prepare(self.consumer, pending).items():
                self.consumer.seek(tp, offset)
            self.consumer.resume(*pending)
        dropped = set(pending)
        return {tp: msgs for tp, msgs in polled.items() if tp not in dropped}

    def _load_cutovers(self) -> None:
        for plan in self.plans.values():
            for vp in plan.views:
                vp.cutover = self.checkpoint.read_cutover(vp)

    def _update_lag(self) -> None:
        if self.consumer is None:
            return
        try:
            assigned = list(self.consumer.assignment())
            if not assigned:
                return
            self.counters.lag = self.consumer.lag(assigned)
        except Exception as e:
            log.debug("lag update failed: %s", e)
