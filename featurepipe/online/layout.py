"""The Redis layout of the online store: the one place that names keys and hash fields.

Private to ``featurepipe.online.state_store``, the only module that reads or writes them (the
stream worker, lookups and ``materialize`` go through its ``StateStore``). Documented for people
in docs/online-store.md.

Keys (``fp`` is the default, configurable prefix)::

    fp:{<entity>}:<view>          HASH  s = state bytes (ViewProgram.dumps), f = view fingerprint
    fp:meta:<view>                HASH  ViewMeta: what was materialized, up to when
    fp:meta:<view>:materialize    HASH  MaterializeProgress (deleted when the run completes)
    fp:offsets:<group>            HASH  <topic>:<partition> -> next offset of a worker group
                                        [":" digest of the message before it]
    fp:generation                 HASH  Generation: which epoch of the store this is

``{<entity>}`` is a Redis Cluster hash tag: only the text between the braces is hashed, so
every key of one entity (one per view) lives in the same slot and one node can update or read
all of an entity's views together. The entity value is encoded by ``encode_entity`` so that the
tag is exactly the entity: ints in decimal, strings with ``%``, ``{`` and ``}`` percent-escaped
(``%25``, ``%7B``, ``%7D``) and the empty string as ``%`` (an empty tag ``{}`` would make Redis
hash the whole key, splitting the entity's views across slots). On a Redis Cluster the store
tags keys by Kafka partition instead (``featurepipe.online.cluster_store.PartitionedLayout``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from redis.typing import EncodableT, FieldT

from featurepipe.online.errors import OnlineStoreError

DEFAULT_PREFIX = "fp"

# fields of a state hash
STATE_FIELD = "s"
FINGERPRINT_FIELD = "f"
QUARANTINE_FIELD = "q"  # why the entity's state cannot be served (replaces ``s``)
STATE_FIELDS = [STATE_FIELD, FINGERPRINT_FIELD, QUARANTINE_FIELD]

# values of ViewMeta.cutover_basis
CUTOVER_EVENT_TIME = "event_time"

Entity = str | int
HashMapping = dict[FieldT, EncodableT]  # what HSET ... mapping= takes


class Named(Protocol):
    """Anything with a view name (a FeatureView, a ViewIR)."""

    @property
    def name(self) -> str: ...


ViewLike = str | Named

_UNESCAPE = {"%25": "%", "%7B": "{", "%7D": "}"}
_ESCAPES = re.compile(r"%(?:25|7B|7D)")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def encode_entity(value: Entity) -> str:
    """The text of an entity inside its hash tag; injective for each key type (str or int)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise OnlineStoreError(
            f"entity keys must be str or int, got {type(value).__name__} {value!r}"
        )
    if isinstance(value, int):
        return str(value)
    if value == "":
        return "%"
    return value.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def decode_entity(text: str, kind: type[str] | type[int] = str) -> Entity:
    """Inverse of ``encode_entity`` for an entity key of type ``kind``."""
    if kind is int:
        return int(text)
    if text == "%":
        return ""
    return _ESCAPES.sub(lambda m: _UNESCAPE[m.group(0)], text)


def view_name(view: ViewLike) -> str:
    name = view if isinstance(view, str) else view.name
    if not name or "{" in name or "}" in name:
        raise OnlineStoreError(f"view name {name!r} cannot be used in a Redis key")
    return name


@dataclass(frozen=True)
class OnlineStoreLayout:
    """Key names under one prefix. Tests use a unique prefix to isolate themselves."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            raise OnlineStoreError(
                f"key prefix {self.prefix!r} must be non-empty and free of '{{' and '}}'"
            )

    def state_key(self, view: ViewLike, entity: Entity) -> str:
        return f"{self.prefix}:{{{encode_entity(entity)}}}:{view_name(view)}"

    def meta_key(self, view: ViewLike) -> str:
        return f"{self.prefix}:meta:{view_name(view)}"

    def progress_key(self, view: ViewLike) -> str:
        return f"{self.prefix}:meta:{view_name(view)}:materialize"

    def offsets_key(self, group: str) -> str:
        return f"{self.prefix}:offsets:{group}"

    def generation_key(self) -> str:
        return f"{self.prefix}:generation"

    def offsets_key_pattern(self) -> str:
        """SCAN MATCH pattern of the offsets hash of every worker group."""
        return f"{glob_escape(self.prefix)}:offsets:*"

    def key_pattern(self) -> str:
        """SCAN MATCH pattern of every key under the prefix."""
        return f"{glob_escape(self.prefix)}:*"

    def state_key_pattern(self, view: ViewLike) -> str:
        """SCAN MATCH pattern of every state key of ``view`` (glob characters escaped)."""
        return f"{glob_escape(self.prefix)}:{{*}}:{glob_escape(view_name(view))}"

    def entity_text(self, key: str | bytes, view: ViewLike) -> str | None:
        """The encoded entity of a state key of ``view``, or None if it is not one."""
        text = key.decode() if isinstance(key, bytes) else key
        head, tail = f"{self.prefix}:{{", f"}}:{view_name(view)}"
        if len(text) < len(head) + len(tail) or not (text.startswith(head) and text.endswith(tail)):
            return None
        inner = text[len(head) : len(text) - len(tail)]
        return None if "{" in inner or "}" in inner else inner


def glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def offset_field(topic: str, partition: int) -> str:
    """The field of a partition in an offsets hash: ``<topic>:<partition>``."""
    return f"{topic}:{partition}"


def parse_offset_field(text: str) -> tuple[str, int]:
    topic, _, partition = text.rpartition(":")
    return topic, int(partition)


def position_value(offset: int, digest: str | None) -> str:
    """The value of a partition in an offsets hash: ``<next offset>[:<digest>]``, the digest
    being that of the message just before ``offset`` (what a restart checks the topic against)."""
    return str(offset) if digest is None else f"{offset}:{digest}"


def parse_position_value(text: str) -> tuple[int, str | None]:
    offset, _, digest = text.partition(":")
    return int(offset), digest or None


@dataclass(frozen=True)
class Generation:
    """Contents of ``<prefix>:generation``: the epoch of the store.

    Created by ``materialize``/``recover`` (a new epoch each time) or by the first stream worker
    of an empty store. A Redis that restarted empty has none: readers and workers refuse it.
    Workers check, in every commit, that the epoch is still the one they started in.
    """

    id: str
    basis: str  # "materialize", "recover" or "stream"
    created_at: str  # ISO-8601 UTC
    views: dict[str, str]  # view name -> fingerprint the epoch was built for

    def to_hash(self) -> HashMapping:
        return {
            "id": self.id,
            "basis": self.basis,
            "created_at": self.created_at,
            "views": json.dumps(self.views, sort_keys=True),
        }

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> Generation:
        h = {_text(k): _text(v) for k, v in raw.items()}
        try:
            return cls(h["id"], h["basis"], h["created_at"], json.loads(h["views"]))
        except (KeyError, ValueError) as e:
            raise OnlineStoreError(f"malformed store generation record {h!r}: {e}") from e


def state_key(view: ViewLike, entity: Entity, prefix: str = DEFAULT_PREFIX) -> str:
    """``<prefix>:{<entity>}:<view>``: the HASH holding one entity's state for one view."""
    return OnlineStoreLayout(prefix).state_key(view, entity)


def meta_key(view: ViewLike, prefix: str = DEFAULT_PREFIX) -> str:
    """``<prefix>:meta:<view>``: the HASH describing the view's materialization."""
    return OnlineStoreLayout(prefix).meta_key(view)


def state_fields(state: bytes, fingerprint: str) -> HashMapping:
    """The fields of a state hash: ``s`` = ``ViewProgram.dumps(state)``, ``f`` = fingerprint."""
    return {STATE_FIELD: state, FINGERPRINT_FIELD: fingerprint}


def quarantine_fields(reason: str, fingerprint: str) -> HashMapping:
    """The fields of a quarantined entity: ``q`` = the reason (``s`` is deleted)."""
    return {QUARANTINE_FIELD: reason, FINGERPRINT_FIELD: fingerprint}


@dataclass(frozen=True)
class ViewMeta:
    """Contents of ``<prefix>:meta:<view>``, written when a materialization completes.

    Cut-over contract: the store holds, for every entity, the state after all events with
    ``ts < materialized_until`` (``cutover_basis`` = ``"event_time"``). A stream worker ingests
    exactly the events with ``ts >= materialized_until``: no gap, no double count. It must
    refuse to run when ``fingerprint`` differs from the view it serves.
    """

    fingerprint: str
    materialized_until: int  # epoch micros
    cutover_basis: str
    materialized_at: str  # ISO-8601 UTC
    entities: int
    events: int
    source_files: list[dict[str, Any]] = field(default_factory=list)

    def to_hash(self) -> HashMapping:
        return {
            "fingerprint": self.fingerprint,
            "materialized_until": str(self.materialized_until),
            "cutover_basis": self.cutover_basis,
            "materialized_at": self.materialized_at,
            "entities": str(self.entities),
            "events": str(self.events),
            "source_files": json.dumps(self.source_files, sort_keys=True),
        }

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> ViewMeta:
        """Parse HGETALL output (bytes or str keys and values)."""
        h = {_text(k): _text(v) for k, v in raw.items()}
        try:
            return cls(
                fingerprint=h["fingerprint"],
                materialized_until=int(h["materialized_until"]),
                cutover_basis=h["cutover_basis"],
                materialized_at=h["materialized_at"],
                entities=int(h["entities"]),
                events=int(h["events"]),
                source_files=json.loads(h.get("source_files", "[]")),
            )
        except (KeyError, ValueError) as e:
            raise OnlineStoreError(f"malformed view metadata {h!r}: {e}") from e


@dataclass(frozen=True)
class MaterializeProgress:
    """Contents of ``<prefix>:meta:<view>:materialize``: how far an unfinished run got.

    ``run`` identifies the inputs (fingerprint, cut-over, files); a rerun with the same ``run``,
    ``until`` and ``fingerprint`` continues after ``last_entity``.
    """

    run: str
    until: int  # epoch micros
    fingerprint: str
    last_entity: Entity | None
    entities: int
    events: int
    updated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_hash(self) -> HashMapping:
        return {
            "run": self.run,
            "until": str(self.until),
            "fingerprint": self.fingerprint,
            "last_entity": json.dumps(self.last_entity),
            "entities": str(self.entities),
            "events": str(self.events),
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> MaterializeProgress | None:
        """Parse HGETALL output; None when absent or unreadable (a rerun then starts over)."""
        h = {_text(k): _text(v) for k, v in raw.items()}
        try:
            return cls(
                run=h["run"],
                until=int(h["until"]),
                fingerprint=h["fingerprint"],
                last_entity=json.loads(h["last_entity"]),
                entities=int(h["entities"]),
                events=int(h["events"]),
                updated_at=h.get("updated_at", ""),
            )
        except (KeyError, ValueError):
            return None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
