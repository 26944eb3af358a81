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
from dataclasses import dataclass
from typing import Any

import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from featurepipe.dsl.loader import Definitions
from featurepipe.online.state_store import DEFAULT_PREFIX, Partition, StateStore
from featurepipe.settings import kafka_security
from featurepipe.stream.checkpoint import Checkpoint, EntityKey
from featurepipe.stream.dead_letters import DeadLetter, DeadLetterPublisher
from featurepipe.stream.errors import StreamError
from featurepipe.stream.metrics import Counters, WorkerMetrics
from featurepipe.stream.plans import TopicPlan, ViewPlan, plan_topics
from featurepipe.stream.retry import Backoff
from featurepipe.stream.validate import MAX_EVENT_BYTES, Invalid

log = logging.getLogger("featurepipe.stream")

__all__ = ["Counters", "StreamError", "StreamWorker", "WorkerConfig"]

_FRESHNESS_SAMPLES = 200  # per batch: the newest events stand for it
_LAG_EVERY_S = 2.0


@dataclass
class WorkerConfig:
    bootstrap: str
    group_id: str = "featurepipe"
    prefix: str = DEFAULT_PREFIX
    max_batch: int = 5000
    poll_timeout_ms: int = 200
    max_event_bytes: int = MAX_EVENT_BYTES
    metrics_port: int | None = None
    idle_exit_s: float | None = None  # stop after this long without messages (demo, tests)
    max_events: int | None = None  # stop after this many messages (tests)
    start_from: str = "earliest"  # where a partition without stored offset starts


class StreamWorker:
    """Consumes every stream source of a definitions package into the online store."""

    def __init__(
        self,
        defs: Definitions,
        config: WorkerConfig,
        client: redis.Redis,
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
        self.checkpoint = Checkpoint(StateStore(client, config.prefix), config.group_id, self.retry)
        self.consumer: KafkaConsumer | None = None
        self.dead_letters: DeadLetterPublisher | None = None
        self.assigned_once = False

    # -- lifecycle ---------------------------------------------------------------------------
    def _connect(self) -> None:
        common = {"bootstrap_servers": self.config.bootstrap, **kafka_security()}
        self.consumer = KafkaConsumer(
            group_id=self.config.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.config.start_from,
            max_poll_records=self.config.max_batch,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=8 << 20,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            **common,
        )
        producer = KafkaProducer(
            max_request_size=self.config.max_event_bytes * 8 + (4 << 20), linger_ms=5, **common
        )
        self.dead_letters = DeadLetterPublisher(producer, self.retry)
        self.consumer.subscribe(list(self.plans), listener=_Rebalance(self))

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
                polled = self.consumer.poll(
                    timeout_ms=self.config.poll_timeout_ms, max_records=self.config.max_batch
                )
                now = time.monotonic()
                got_messages = any(polled.values())
                if got_messages or not self.assigned_once:
                    idle_since = now  # idle time counts only once partitions are assigned
                if got_messages:
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
            self.consumer.close(autocommit=False)
            self.consumer = None
        if self.dead_letters is not None:
            self.dead_letters.close()
            self.dead_letters = None
        self.metrics.close()

    # -- one batch ---------------------------------------------------------------------------
    def process(self, polled: Mapping[TopicPartition, list[Any]]) -> None:
        c = self.counters
        dead: list[DeadLetter] = []
        valid: list[tuple[TopicPlan, Any, dict[str, Any]]] = []
        next_offsets: dict[Partition, int] = {}
        first_offsets: dict[Partition, int] = {}
        for tp, msgs in polled.items():
            plan = self.plans[tp.topic]
            for m in msgs:
                c.events += 1
                next_offsets[tp] = m.offset + 1
                first_offsets.setdefault(tp, m.offset)
                try:
                    event = plan.validator.parse(m.value)
                    plan.check_key(m.key, event)
                except Invalid as e:
                    dead.append(DeadLetter(tp.topic, m, e.reason))
                    continue
                valid.append((plan, m, event))
        self._load_states(valid)
        cache = self.checkpoint.cache
        touched: dict[EntityKey, ViewPlan] = {}
        failed = 0
        for plan, m, event in valid:
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
                try:
                    vp.program.ingest(cache[ck], event, m.offset)
                except Exception as e:
                    # the row stage raises before the state changes: dead-letter it
                    dead.append(
                        DeadLetter(plan.topic, m, f"view '{vp.view.name}': {type(e).__name__}: {e}")
                    )
                    failed += 1
                    continue
                touched[ck] = vp
        if dead:
            self._dead_letter(dead)
        if not self._commit(touched, first_offsets, next_offsets):
            return  # another worker owns these partitions now: nothing of this batch counts
        c.valid += len(valid) - failed
        c.invalid += len(dead)
        c.batches += 1
        now_ms = time.time() * 1000
        self.metrics.record_freshness(
            now_ms - m.timestamp for _, m, _ in valid[-_FRESHNESS_SAMPLES:] if m.timestamp
        )

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
        assert self.dead_letters is not None
        for d in dead:
            self.counters.reasons[d.kind] += 1
        self.dead_letters.publish(dead)

    def _commit(
        self,
        touched: dict[EntityKey, ViewPlan],
        first: dict[Partition, int],
        offsets: dict[Partition, int],
    ) -> bool:
        """Commit through the checkpoint; on success mirror the offsets to Kafka (advisory)."""
        if not self.checkpoint.commit(touched, first, offsets):
            self._lost_ownership(offsets)
            return False
        self.counters.last_flush = time.time()
        if self.consumer is not None and offsets:
            try:  # advisory only: the offsets that matter are in Redis
                self.consumer.commit(
                    {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
                )
            except Exception as e:
                log.debug("advisory offset commit failed: %s", e)
        return True

    def _lost_ownership(self, offsets: dict[Partition, int]) -> None:
        log.warning("stored offsets moved past this batch: another worker owns %s", list(offsets))
        stored = self.checkpoint.offsets()
        if self.consumer is None:
            return
        for tp in offsets:
            off = stored.get(tp)
            if off is not None:
                try:
                    self.consumer.seek(tp, off)
                except Exception as e:  # the partition may be gone already
                    log.debug("seek after lost ownership failed: %s", e)

    def _count_retry(self) -> None:
        self.counters.flush_retries += 1

    # -- offsets and cut-over ----------------------------------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        assert self.consumer is not None
        stored = self.checkpoint.offsets()
        for tp in partitions:
            off = stored.get(tp)
            if off is not None:
                self.consumer.seek(tp, off)
            elif self.config.start_from == "earliest":
                self.consumer.seek_to_beginning(tp)
        self.assigned_once = True
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        # another worker may own these entities next: never serve from a stale cache
        self.checkpoint.drop_cache()

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
            ends = self.consumer.end_offsets(assigned)
            self.counters.lag = sum(
                max(ends[tp] - self.consumer.position(tp), 0) for tp in assigned
            )
        except Exception as e:
            log.debug("lag update failed: %s", e)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.worker.on_revoked(revoked)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.worker.on_assigned(assigned)
