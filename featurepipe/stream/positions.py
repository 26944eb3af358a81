"""Where a worker starts each partition, and the checks that it is the right place.

A worker never seeks silently. Before reading an assigned partition it establishes that the
online store and the broker describe the same history:

- the store has a generation (``materialize``/``recover`` made one, or this is a brand-new store,
  which the first worker initializes). A store without one while Kafka remembers offsets for the
  group was emptied under us: refused;
- a group starting afresh on a topic (no stored position for any of its partitions) records a
  position for *every* partition of the topic at once, so a position missing later (a Redis
  rolled back to an older snapshot) is detected, not mistaken for a new partition; and every
  view it serves is either materialized (a cut-over) or holds no state yet — otherwise the
  stored states cannot be continued exactly;
- a stored position must not lie before the first offset the broker holds (events deleted
  before they were applied);
- the message just before a stored position must be readable and be the one the worker read
  there (its digest is stored with the offset). A recreated topic or a reset broker ends before
  it (Kafka answers OFFSET_OUT_OF_RANGE; some brokers just return nothing, hence a deadline) or
  holds another message there. The end offset the broker reports is not used: some
  Kafka-protocol brokers report the last batch's base offset instead of the high watermark.

Any failure is a ``StreamError`` that names the partition and says how to recover.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import xxhash
from kafka import TopicPartition

from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.state_store import Position, StateStore
from featurepipe.stream.consumers import WorkerConsumer
from featurepipe.stream.errors import StreamError
from featurepipe.stream.plans import TopicPlan

log = logging.getLogger("featurepipe.stream")

RECOVER = "recover with `featurepipe recover --until <cut-over>` (docs/operations.md)"


def message_digest(m: Any) -> str:
    """Identity of one Kafka message: its key, value and timestamp."""
    h = xxhash.xxh64()
    for part in (m.key, m.value):
        h.update(b"\x00" if part is None else b"\x01" + len(part).to_bytes(8, "big") + part)
    h.update(int(m.timestamp or 0).to_bytes(8, "big", signed=True))
    return h.hexdigest()


class StartPositions:
    """Prepares assigned partitions and checks the first message read after a stored position."""

    def __init__(
        self,
        store: StateStore,
        group: str,
        plans: Mapping[str, TopicPlan],
        start_from: str,
        verify_timeout_s: float = 15.0,
    ) -> None:
        self.store = store
        self.group = group
        self.plans = plans
        self.start_from = start_from
        self.verify_timeout_s = verify_timeout_s
        self.expect: dict[TopicPartition, tuple[int, str]] = {}  # tp -> (offset, digest)
        self.deadline = 0.0

    def bind_generation(
        self, consumer: WorkerConsumer, partitions: Iterable[TopicPartition]
    ) -> str:
        """The store's generation (created for a brand-new store); raises if it was lost."""
        if self.store.partitioned:
            self._route(consumer)
        generation = self.store.read_generation()
        if generation is None:
            remembered = [
                tp for tp in partitions if consumer.committed(tp) is not None
            ]  # the worker mirrors every commit to Kafka: the group has run before
            if remembered:
                raise StreamError(
                    f"the online store (prefix '{self.store.prefix}') holds no generation, but "
                    f"Kafka has committed offsets of group '{self.group}' for "
                    f"{_names(remembered)}: the store was emptied or lost after this group "
                    f"wrote to it. Streaming on would serve partial states; {RECOVER}"
                )
            views = {
                vp.view.name: vp.view.fingerprint
                for plan in self.plans.values()
                for vp in plan.views
            }
            generation, created = self.store.create_generation("stream", views)
            if created:
                log.info("initialized online store generation %s", generation.id)
        if self.store.generation not in (None, generation.id):
            raise StreamError(
                f"the online store (prefix '{self.store.prefix}') is now generation "
                f"{generation.id}, not {self.store.generation} this worker started with: it was "
                "re-materialized or recovered. Restart the worker to resume from the new "
                "generation's positions"
            )
        self.store.bind(generation.id)
        return generation.id

    def _route(self, consumer: WorkerConsumer) -> None:
        """A store kept by Kafka partition (a Redis Cluster): record each view's topic and the
        topic's partition count, or refuse a layout built for other ones; from now on every
        message must be on the partition its key hashes to (``TopicPlan.check_key``)."""
        counts: dict[str, int] = {}
        for topic in self.plans:
            ids = consumer.partitions_for_topic(topic) or set()
            if not ids:
                raise StreamError(f"topic '{topic}' has no partitions on the broker")
            counts[topic] = len(ids)
        views = {vp.view.name: topic for topic, plan in self.plans.items() for vp in plan.views}
        try:
            self.store.register_routing(views, counts)
        except OnlineStoreError as e:
            raise StreamError(str(e)) from e
        for topic, plan in self.plans.items():
            plan.partitions = counts[topic]

    def prepare(
        self, consumer: WorkerConsumer, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The offset to seek each partition to; raises ``StreamError`` when they do not fit."""
        positions = self.store.read_positions(self.group)
        for topic in sorted({tp.topic for tp in partitions}):
            if not any(t == topic for t, _ in positions):
                self._start_topic(consumer, topic)
                positions = self.store.read_positions(self.group)
        begin = consumer.beginning_offsets(partitions)
        seek: dict[TopicPartition, int] = {}
        self.expect = {}
        self.deadline = time.monotonic() + self.verify_timeout_s
        for tp in partitions:
            pos: Position | None = positions.get((tp.topic, tp.partition))
            where = f"{tp.topic}[{tp.partition}]"
            if pos is None:
                raise StreamError(
                    f"group '{self.group}' has stored positions for other partitions of "
                    f"'{tp.topic}' but none for {where}: the store was rolled back to a point "
                    f"before this partition was recorded, or the topic gained partitions. "
                    f"Resuming it from anywhere would be a guess; {RECOVER}"
                )
            if pos.offset < begin[tp]:
                raise StreamError(
                    f"{where}: the stored position {pos.offset:,} is before the first offset "
                    f"the broker still holds ({begin[tp]:,}): events were deleted (retention) "
                    f"before this group applied them; {RECOVER}"
                )
            if pos.digest is not None and pos.offset - 1 >= begin[tp]:
                # read the message before the position again and compare it with what was read
                self.expect[tp] = (pos.offset - 1, pos.digest)
                seek[tp] = pos.offset - 1
            else:
                seek[tp] = pos.offset
        return seek

    def _start_topic(self, consumer: WorkerConsumer, topic: str) -> None:
        """First time this group reads ``topic``: check the served views can start from here,
        then record a position for every partition of the topic (all or nothing)."""
        plan = self.plans[topic]
        for vp in plan.views:
            if vp.cutover is None and self.store.has_states(vp.view):
                raise StreamError(
                    f"view '{vp.view.name}' holds online states that no materialization "
                    f"completed (no cut-over) and group '{self.group}' has no stored position "
                    f"on '{topic}': the states cannot be continued exactly from any offset; "
                    f"{RECOVER}"
                )
        ids = consumer.partitions_for_topic(topic) or set()
        every = [TopicPartition(topic, p) for p in sorted(ids)]
        if not every:
            raise StreamError(f"topic '{topic}' has no partitions on the broker")
        start = (
            consumer.beginning_offsets(every)
            if self.start_from == "earliest"
            else consumer.end_offsets(every)
        )
        if self.store.init_positions(
            self.group, {(tp.topic, tp.partition): start[tp] for tp in every}
        ):
            log.info("group %s starts %s at %s", self.group, topic, self.start_from)

    def check(self, polled: Mapping[TopicPartition, list[Any]]) -> dict[TopicPartition, list[Any]]:
        """``polled`` without the re-read messages, once each matches its stored digest."""
        if not self.expect:
            return dict(polled)
        waiting = [tp for tp in self.expect if not polled.get(tp)]
        if waiting and time.monotonic() > self.deadline:
            tp = waiting[0]
            raise StreamError(
                f"{tp.topic}[{tp.partition}]: the message at offset {self.expect[tp][0]:,}, "
                f"just before the stored position, cannot be read (none within "
                f"{self.verify_timeout_s:g} s): the partition ends before it, so the topic was "
                f"recreated or the broker reset since the store was written; {RECOVER}"
            )
        out: dict[TopicPartition, list[Any]] = {}
        for tp, msgs in polled.items():
            expected = self.expect.get(tp)
            if expected is not None and msgs:
                offset, digest = expected
                first = msgs[0]
                if first.offset != offset or message_digest(first) != digest:
                    raise StreamError(
                        f"{tp.topic}[{tp.partition}]: the message at offset {offset:,} is not "
                        "the one this group read there (the topic was recreated or rewritten "
                        f"since): the stored states do not belong to this topic; {RECOVER}"
                    )
                del self.expect[tp]
                msgs = msgs[1:]
            out[tp] = msgs
        return out


def _names(partitions: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions))
