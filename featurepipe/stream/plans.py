"""Which topic feeds which views: the routing the worker applies to every message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from featurepipe.compile.python_state import ViewProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.dsl.loader import Definitions
from featurepipe.ir.entity_keys import compose
from featurepipe.online.partitioning import partition_of
from featurepipe.stream.dead_letters import (
    KEY_MISMATCH,
    NOT_KEYED,
    WRONG_PARTITION,
    Refused,
    categorize,
)
from featurepipe.stream.errors import StreamError
from featurepipe.stream.validate import EventValidator, Invalid


@dataclass
class ViewPlan:
    view: FeatureView
    program: ViewProgram
    key: str  # the entity key field
    cutover: int | None = None  # epoch micros of the materialize cut-over, if any


@dataclass
class TopicPlan:
    topic: str
    validator: EventValidator
    views: list[ViewPlan]
    fields: frozenset[str] = field(init=False)
    # the topic's partition count when the online store keeps states by partition (a Redis
    # Cluster): each message must then be on the partition its key hashes to; 0 = any
    partitions: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.fields = frozenset(self.validator.source.fields)

    def check_key(self, key: bytes | None, event: dict[str, Any], partition: int = -1) -> None:
        """Per-entity order and single ownership need messages keyed by the entity.

        A message without a key is refused, not repartitioned: the producer's partitioner would
        have spread its entity over partitions, hence over workers, each holding part of the
        entity's events. (An event without an entity is not attributed to any: the caller
        counts it, as the batch path drops it.)"""
        if not self.views:
            return
        name = self.views[0].key
        parts = self.views[0].view.ir.entity_parts
        if parts:  # a composite key: its text, from the parts, as the batch path computes it
            event[name] = compose(parts, event)
        entity = event[name]
        if entity is None:
            return
        if key is None:
            raise Refused(
                NOT_KEYED,
                f"{NOT_KEYED}: the message has no key; the topic must be keyed by "
                f"'{name}' (here {str(entity)[:64]!r}) so that one worker owns each entity",
            )
        if key != str(entity).encode():
            raise Refused(
                KEY_MISMATCH,
                f"message key {key[:64]!r} is not the entity '{name}' = {str(entity)[:64]!r}: "
                "the topic must be keyed by the entity",
            )
        if self.partitions and partition_of(key, self.partitions) != partition:
            raise Refused(
                WRONG_PARTITION,
                f"{WRONG_PARTITION}: the message keyed {key[:64]!r} is on partition "
                f"{partition}, but Kafka's default (murmur2) partitioner puts that key on "
                f"{partition_of(key, self.partitions)} of {self.partitions}, where the online "
                "store (a Redis Cluster) keeps its state: produce with the murmur2 partitioner "
                "(confluent-kafka/librdkafka: partitioner=murmur2_random)",
            )

    def category(self, error: Invalid) -> str:
        """The bounded category of a refused message (``dead_letters.categorize``)."""
        return categorize(error, self.fields)


def plan_topics(
    defs: Definitions,
    max_event_bytes: int,
    *,
    views: list[str] | None = None,
    topics: dict[str, str] | None = None,
) -> dict[str, TopicPlan]:
    """The views (all, or ``views``) with a stream source, grouped by topic.

    ``topics`` maps source names to the topic to read instead of the declared one. A name of
    ``views`` that is not a view with a stream source raises ``StreamError`` naming it and the
    views that have one.
    """
    if views:
        _check_view_names(defs, views)
    plans: dict[str, TopicPlan] = {}
    for view in defs.views.values():
        if views and view.name not in views:
            continue
        src = view.source
        if src.stream is None:
            continue
        topic = (topics or {}).get(src.name, src.stream.topic)
        plan = plans.get(topic)
        if plan is None:
            plan = plans[topic] = TopicPlan(topic, EventValidator(src, max_event_bytes), [])
        elif plan.validator.source is not src:
            raise StreamError(f"topic '{topic}' is declared by two different sources")
        plan.views.append(ViewPlan(view, ViewProgram(view.ir), view.entity.key))
    if not plans:
        raise StreamError("no feature view has a KafkaSource to consume")
    for plan in plans.values():
        keys = {v.key for v in plan.views}
        if len(keys) > 1:
            # per-entity arrival order and single ownership need the topic keyed by the entity
            raise StreamError(
                f"topic '{plan.topic}' feeds views keyed by {sorted(keys)}: a topic is "
                "partitioned by one entity key; give the other views their own topic"
            )
    return plans


def _check_view_names(defs: Definitions, names: list[str]) -> None:
    streamed = [v.name for v in defs.views.values() if v.source.stream is not None]
    unknown = [n for n in dict.fromkeys(names) if n not in defs.views]
    batch_only = [n for n in dict.fromkeys(names) if n in defs.views and n not in streamed]
    if not unknown and not batch_only:
        return
    problems = []
    if unknown:
        problems.append(f"unknown view{_s(unknown)} {_quoted(unknown)}")
    if batch_only:
        verb = "have" if len(batch_only) > 1 else "has"
        problems.append(f"view{_s(batch_only)} {_quoted(batch_only)} {verb} no stream source")
    have = (
        f"the views with a stream source are {_quoted(streamed)}"
        if streamed
        else "no view has a stream source (a KafkaSource)"
    )
    raise StreamError(f"{'; '.join(problems)}: {have}")


def _s(names: list[str]) -> str:
    return "s" if len(names) > 1 else ""


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)
