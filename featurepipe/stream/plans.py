"""Which topic feeds which views: the routing the worker applies to every message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featurepipe.compile.python_state import ViewProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.dsl.loader import Definitions
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


def plan_topics(
    defs: Definitions,
    max_event_bytes: int,
    *,
    views: list[str] | None = None,
    topics: dict[str, str] | None = None,
) -> dict[str, TopicPlan]:
    """The views (all, or ``views``) with a stream source, grouped by topic.

    ``topics`` maps source names to the topic to read instead of the declared one.
    """
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
