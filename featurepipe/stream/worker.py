"""``featurepipe stream``: Kafka -> per-event evaluator -> Redis, with an exactly-once effect.

Per poll batch:

1. every message is validated against the source's pydantic contract; invalid ones go to
   ``<topic>.dlq`` with the reason (header ``featurepipe-reason``) and the original bytes;
2. states of the batch's entities not yet cached are read from Redis in one round trip;
3. valid events are ingested in partition order (seq = the Kafka offset), skipping events
   before the view's materialize cut-over;
4. the touched states *and the next offsets of every partition in the batch* are written in
   one MULTI/EXEC transaction. A (re)started worker seeks each assigned partition to the offset
   stored in Redis, so a crash anywhere loses nothing and counts nothing twice. Kafka's own
   committed offsets are updated afterwards for lag monitoring only.

Redis or Kafka outages are retried with capped exponential backoff; SIGTERM stops after the
batch in flight. Dead-letter publishing is at-least-once (a crash between publishing and the
Redis commit republishes those dead letters).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener

from featurepipe.compile.python_state import ViewProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.dsl.loader import Definitions
from featurepipe.errors import FeaturepipeError
from featurepipe.online.layout import DEFAULT_PREFIX, OnlineStoreLayout, ViewMeta
from featurepipe.settings import kafka_security
from featurepipe.stream.validate import MAX_EVENT_BYTES, EventValidator, Invalid

log = logging.getLogger("featurepipe.stream")
DLQ_SUFFIX = ".dlq"


class StreamError(FeaturepipeError):
    """The worker cannot run as configured."""


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


@dataclass
class Counters:
    events: int = 0
    valid: int = 0
    invalid: int = 0
    before_cutover: int = 0
    null_entity: int = 0
    batches: int = 0
    flush_retries: int = 0
    last_flush: float = 0.0
    started: float = field(default_factory=time.time)
    lag: int = 0
    freshness_ms: list[float] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def prometheus(self) -> str:
        rate = self.valid / max(time.time() - self.started, 1e-9)
        fresh = sorted(self.freshness_ms[-10_000:])

        def q(p: float) -> float:
            return fresh[min(int(p * len(fresh)), len(fresh) - 1)] / 1000 if fresh else 0.0

        lines = [
            "# TYPE featurepipe_events_total counter",
            f"featurepipe_events_total {self.events}",
            f"featurepipe_events_valid_total {self.valid}",
            f"featurepipe_events_invalid_total {self.invalid}",
            f"featurepipe_events_before_cutover_total {self.before_cutover}",
            f"featurepipe_batches_total {self.batches}",
            f"featurepipe_flush_retries_total {self.flush_retries}",
            f"featurepipe_last_flush_timestamp_seconds {self.last_flush:.3f}",
            f"featurepipe_events_per_second {rate:.1f}",
            f"featurepipe_consumer_lag {self.lag}",
            f'featurepipe_freshness_seconds{{quantile="0.5"}} {q(0.5):.4f}',
            f'featurepipe_freshness_seconds{{quantile="0.99"}} {q(0.99):.4f}',
        ]
        return "\n".join(lines) + "\n"


@dataclass
class _ViewPlan:
    view: FeatureView
    program: ViewProgram
    key: str
    cutover: int | None = None


@dataclass
class _TopicPlan:
    topic: str
    validator: EventValidator
    views: list[_ViewPlan]

    def check_key(self, key: bytes | None, event: dict[str, Any]) -> None:
        """Per-entity order and single ownership need messages keyed by the entity."""
        if key is None or not self.views:
            return
        entity = event[self.views[0].key]
        if entity is not None and key != str(entity).encode():
            raise Invalid(
                f"message key {key[:64]!r} is not the entity '{self.views[0].key}' = {entity!r}: "
                "the topic must be keyed by the entity"
            )


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
        self.redis = client
        self.layout = OnlineStoreLayout(config.prefix)
        self.counters = Counters()
        self.stop_requested = threading.Event()
        self.plans: dict[str, _TopicPlan] = {}
        for view in defs.views.values():
            if views and view.name not in views:
                continue
            src = view.source
            if src.stream is None:
                continue
            topic = (topics or {}).get(src.name, src.stream.topic)
            plan = self.plans.get(topic)
            if plan is None:
                plan = self.plans[topic] = _TopicPlan(
                    topic, EventValidator(src, config.max_event_bytes), []
                )
            elif plan.validator.source is not src:
                raise StreamError(f"topic '{topic}' is declared by two different sources")
            plan.views.append(_ViewPlan(view, ViewProgram(view.ir), view.entity.key))
        if not self.plans:
            raise StreamError("no feature view has a KafkaSource to consume")
        for plan in self.plans.values():
            keys = {v.key for v in plan.views}
            if len(keys) > 1:
                # per-entity arrival order and single ownership need the topic keyed by the entity
                raise StreamError(
                    f"topic '{plan.topic}' feeds views keyed by {sorted(keys)}: a topic is "
                    "partitioned by one entity key; give the other views their own topic"
                )
        self.cache: dict[tuple[str, Any], list[Any]] = {}
        self.offsets_key = f"{config.prefix}:offsets:{config.group_id}"
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self._metrics_server: ThreadingHTTPServer | None = None
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
        self.producer = KafkaProducer(
            max_request_size=self.config.max_event_bytes * 8 + (4 << 20), linger_ms=5, **common
        )
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
            self._serve_metrics(self.config.metrics_port)
        idle_since = time.monotonic()
        last_lag = 0.0
        try:
            while not self.stop_requested.is_set():
                polled = self.consumer.poll(
                    timeout_ms=self.config.poll_timeout_ms, max_records=self.config.max_batch
                )
                messages = [m for batch in polled.values() for m in batch]
                now = time.monotonic()
                if messages or not self.assigned_once:
                    idle_since = now  # idle time counts only once partitions are assigned
                if messages:
                    self.process(polled)
                elif (
                    self.config.idle_exit_s is not None
                    and now - idle_since > self.config.idle_exit_s
                ):
                    break
                if now - last_lag > 2.0:
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
        if self.producer is not None:
            self.producer.flush()
            self.producer.close()
            self.producer = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None

    # -- one batch ---------------------------------------------------------------------------
    def process(self, polled: dict[TopicPartition, list[Any]]) -> None:
        dead: list[tuple[str, Any, str]] = []
        valid: list[tuple[_TopicPlan, Any, dict[str, Any]]] = []
        next_offsets: dict[TopicPartition, int] = {}
        first_offsets: dict[TopicPartition, int] = {}
        for tp, msgs in polled.items():
            plan = self.plans[tp.topic]
            for m in msgs:
                self.counters.events += 1
                next_offsets[tp] = m.offset + 1
                first_offsets.setdefault(tp, m.offset)
                try:
                    event = plan.validator.parse(m.value)
                    plan.check_key(m.key, event)
                except Invalid as e:
                    dead.append((tp.topic, m, e.reason))
                    continue
                valid.append((plan, m, event))
        self._load_states(valid)
        touched: dict[tuple[str, Any], _ViewPlan] = {}
        for plan, m, event in valid:
            for vp in plan.views:
                entity = event[vp.key]
                if entity is None:  # cannot be attributed; the batch path drops it too
                    self.counters.null_entity += 1
                    continue
                ts = event[vp.view.source.timestamp]
                if vp.cutover is not None and ts < vp.cutover:
                    self.counters.before_cutover += 1
                    continue
                ck = (vp.view.name, entity)
                try:
                    vp.program.ingest(self.cache[ck], event, m.offset)
                except Exception as e:
                    # the row stage raises before the state changes: dead-letter it
                    dead.append((plan.topic, m, f"view '{vp.view.name}': {type(e).__name__}: {e}"))
                    self.counters.valid -= 1
                    continue
                touched[ck] = vp
        if dead:
            self._dead_letter(dead)
        if not self._commit(touched, next_offsets, first_offsets):
            return  # another worker owns these partitions now: nothing of this batch counts
        self.counters.valid += len(valid)
        self.counters.invalid += len(dead)
        self.counters.batches += 1
        now_ms = time.time() * 1000
        self.counters.freshness_ms.extend(
            now_ms - m.timestamp for _, m, _ in valid[-200:] if m.timestamp
        )
        if len(self.counters.freshness_ms) > 50_000:
            del self.counters.freshness_ms[:25_000]

    def _load_states(self, valid: list[tuple[_TopicPlan, Any, dict[str, Any]]]) -> None:
        missing: dict[tuple[str, Any], _ViewPlan] = {}
        for plan, _, event in valid:
            for vp in plan.views:
                ck = (vp.view.name, event[vp.key])
                if ck[1] is None:
                    continue
                if ck not in self.cache and ck not in missing:
                    missing[ck] = vp
        if not missing:
            return
        items = list(missing.items())

        def read() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for (_, entity), vp in items:
                pipe.hmget(self.layout.state_key(vp.view, entity), ["s", "f"])
            return list(pipe.execute())

        for ((name, entity), vp), (blob, fp) in zip(items, self._retry(read), strict=True):
            if blob is None:
                self.cache[(name, entity)] = vp.program.new_state()
                continue
            served = fp.decode() if isinstance(fp, bytes) else fp
            if served != vp.view.fingerprint:
                raise StreamError(
                    f"view '{name}': the online store holds version {served} for entity "
                    f"{entity!r} but this worker serves {vp.view.fingerprint}; materialize the "
                    "new version (or use another prefix) before streaming"
                )
            self.cache[(name, entity)] = vp.program.loads(blob)

    def _commit(
        self,
        touched: dict[tuple[str, Any], _ViewPlan],
        offsets: dict[TopicPartition, int],
        first: dict[TopicPartition, int],
    ) -> bool:
        """States and next offsets in one transaction, only if the stored offsets are still
        where this batch started (compare-and-set under WATCH): a worker that stalled past a
        rebalance cannot overwrite its successor. Returns False when ownership was lost."""
        fields: dict[Any, Any] = {f"{tp.topic}:{tp.partition}": str(o) for tp, o in offsets.items()}
        expected = {f"{tp.topic}:{tp.partition}": o for tp, o in first.items()}
        blobs = {
            ck: (self.layout.state_key(vp.view, ck[1]), vp.program.dumps(self.cache[ck]), vp)
            for ck, vp in touched.items()
        }

        def write() -> bool:
            with self.redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(self.offsets_key)  # type: ignore[no-untyped-call]
                        stored = pipe.hmget(self.offsets_key, list(expected)) if expected else []
                        for start, have in zip(expected.values(), stored, strict=True):
                            if have is not None and int(have) != start:
                                return False
                        pipe.multi()  # MULTI ... EXEC: state and offsets together
                        for key, blob, vp in blobs.values():
                            pipe.hset(key, mapping={"s": blob, "f": vp.view.fingerprint})
                        if fields:
                            pipe.hset(self.offsets_key, mapping=fields)
                        pipe.execute()
                        return True
                    except redis.WatchError:
                        continue

        if not self._retry(write):
            self._lost_ownership(offsets)
            return False
        self.counters.last_flush = time.time()
        if self.consumer is not None and offsets:
            from kafka.structs import OffsetAndMetadata

            try:  # advisory only: the offsets that matter are in Redis
                self.consumer.commit(
                    {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
                )
            except Exception as e:
                log.debug("advisory offset commit failed: %s", e)
        return True

    def _lost_ownership(self, offsets: dict[TopicPartition, int]) -> None:
        log.warning("stored offsets moved past this batch: another worker owns %s", list(offsets))
        self.cache.clear()
        stored = self.stored_offsets()
        if self.consumer is None:
            return
        for tp in offsets:
            off = stored.get(f"{tp.topic}:{tp.partition}")
            if off is not None:
                try:
                    self.consumer.seek(tp, off)
                except Exception as e:  # the partition may be gone already
                    log.debug("seek after lost ownership failed: %s", e)

    def _dead_letter(self, dead: list[tuple[str, Any, str]]) -> None:
        assert self.producer is not None
        for topic, m, reason in dead:
            self.counters.reasons[reason.split(":")[0]] += 1
            headers = [
                ("featurepipe-reason", reason.encode()),
                ("featurepipe-source", f"{topic}/{m.partition}/{m.offset}".encode()),
            ]
            self.producer.send(topic + DLQ_SUFFIX, key=m.key, value=m.value or b"", headers=headers)
        self._retry(lambda: self.producer.flush(timeout=30) if self.producer else None)

    def _retry(self, fn: Callable[[], Any]) -> Any:
        delay = 0.1
        while True:
            try:
                return fn()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                self.counters.flush_retries += 1
                log.warning("online store unavailable (%s); retrying in %.1fs", e, delay)
                if self.stop_requested.is_set():
                    raise StreamError(f"stopped while the online store was unavailable: {e}") from e
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- offsets and cut-over ----------------------------------------------------------------
    def stored_offsets(self) -> dict[str, int]:
        raw = self._retry(lambda: self.redis.hgetall(self.offsets_key))
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        assert self.consumer is not None
        stored = self.stored_offsets()
        for tp in partitions:
            off = stored.get(f"{tp.topic}:{tp.partition}")
            if off is not None:
                self.consumer.seek(tp, off)
            elif self.config.start_from == "earliest":
                self.consumer.seek_to_beginning(tp)
        self.assigned_once = True
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        # another worker may own these entities next: never serve from a stale cache
        self.cache.clear()

    def _load_cutovers(self) -> None:
        for plan in self.plans.values():
            for vp in plan.views:
                key = self.layout.meta_key(vp.view)
                raw = self._retry(lambda key=key: self.redis.hgetall(key))  # type: ignore[misc]
                if raw:
                    meta = ViewMeta.from_hash(raw)
                    if meta.fingerprint != vp.view.fingerprint:
                        raise StreamError(
                            f"view '{vp.view.name}': materialized version {meta.fingerprint} "
                            f"differs from this worker's {vp.view.fingerprint}"
                        )
                    vp.cutover = meta.materialized_until

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

    def _serve_metrics(self, port: int) -> None:
        counters = self.counters

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = counters.prometheus().encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self._metrics_server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._metrics_server.serve_forever, daemon=True).start()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.worker.on_revoked(revoked)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.worker.on_assigned(assigned)
