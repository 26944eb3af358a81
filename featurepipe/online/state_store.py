"""The online store in Redis: the one reader and writer of its keys.

``StateStore`` owns every key and hash field (named in ``featurepipe.online.layout``, its private
helper): the per-entity states, the materialization records (``ViewMeta`` and its progress) and
the stream workers' offsets with their compare-and-set commit. ``materialize``, the stream
worker and online lookups call it; nothing else spells a key. See docs/online-store.md.

Redis errors propagate unchanged: callers decide whether to retry (the worker) or to report
(``materialize``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import redis

from featurepipe.online.layout import (
    CUTOVER_EVENT_TIME,
    DEFAULT_PREFIX,
    STATE_FIELDS,
    Entity,
    HashMapping,
    MaterializeProgress,
    OnlineStoreLayout,
    ViewLike,
    ViewMeta,
    encode_entity,
    offset_field,
    parse_offset_field,
    state_fields,
)

__all__ = [
    "CUTOVER_EVENT_TIME",
    "DEFAULT_PREFIX",
    "Client",
    "Entity",
    "MaterializeProgress",
    "Partition",
    "StateStore",
    "StateWrite",
    "StoredState",
    "ViewMeta",
]

Client = redis.Redis | redis.RedisCluster
Partition = tuple[str, int]  # (topic, partition); kafka's TopicPartition is such a tuple

_SCAN_COUNT = 1000
_DELETE_BATCH = 1000


class StoredState(NamedTuple):
    """One entity's state for one view, as stored."""

    state: bytes  # ViewProgram.dumps
    fingerprint: str | None  # of the view definition that wrote it


class StateWrite(NamedTuple):
    """A state to store: absolute bytes, so writing it twice is harmless."""

    view: ViewLike
    entity: Entity
    state: bytes
    fingerprint: str


class StateStore:
    """Reads and writes the online store under one key prefix."""

    def __init__(self, client: Client, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.layout = OnlineStoreLayout(prefix)
        # a cluster pipeline spans nodes without ordering
        self.cluster = isinstance(client, redis.RedisCluster)

    @property
    def prefix(self) -> str:
        return self.layout.prefix

    # -- entity states -----------------------------------------------------------------------
    def read_states(self, wanted: Iterable[tuple[ViewLike, Entity]]) -> list[StoredState | None]:
        """The states of (view, entity) pairs in one round trip; None where there is none."""
        pipe = self.client.pipeline(transaction=False)
        for view, entity in wanted:
            pipe.hmget(self.layout.state_key(view, entity), STATE_FIELDS)
        return [
            None if blob is None else StoredState(blob, None if fp is None else _text(fp))
            for blob, fp in pipe.execute()
        ]

    def write_states_with_progress(
        self,
        view: ViewLike,
        fingerprint: str,
        states: Sequence[tuple[Entity, bytes]],
        progress: MaterializeProgress,
    ) -> None:
        """One round trip: every state, then the progress record that claims them.

        The record follows the states on the same connection, so it never claims an entity
        whose state was not written; on a cluster it is written after the batch returns.
        """
        progress_key = self.layout.progress_key(view)
        record = progress.to_hash()
        pipe = self.client.pipeline(transaction=False)
        for entity, blob in states:
            pipe.hset(self.layout.state_key(view, entity), mapping=state_fields(blob, fingerprint))
        if not self.cluster:
            pipe.hset(progress_key, mapping=record)
        pipe.execute()
        if self.cluster:
            self.client.hset(progress_key, mapping=record)

    def delete_states_except(self, view: ViewLike, keep: Iterable[Entity]) -> int:
        """Delete the state of every entity of ``view`` not in ``keep``; the number deleted."""
        current = {encode_entity(e) for e in keep}
        stale: list[bytes | str] = []
        deleted = 0
        for k in self.client.scan_iter(
            match=self.layout.state_key_pattern(view), count=_SCAN_COUNT
        ):
            text = self.layout.entity_text(k, view)
            if text is not None and text not in current:
                stale.append(k)
                if len(stale) >= _DELETE_BATCH:
                    deleted += self._delete(stale)
                    stale = []
        if stale:
            deleted += self._delete(stale)
        return deleted

    # -- materialization records --------------------------------------------------------------
    def read_meta(self, view: ViewLike) -> ViewMeta | None:
        """What a completed materialization recorded; None if none completed."""
        raw = self.client.hgetall(self.layout.meta_key(view))
        return ViewMeta.from_hash(raw) if raw else None

    def read_progress(self, view: ViewLike) -> MaterializeProgress | None:
        """The progress of an unfinished materialization; None if there is none."""
        raw = self.client.hgetall(self.layout.progress_key(view))
        return MaterializeProgress.from_hash(raw) if raw else None

    def start_materialization(self, view: ViewLike, progress: MaterializeProgress) -> None:
        """Mark ``view`` incomplete (no meta key) and record a fresh run.

        Every worker group's offsets are dropped too: they belong to the states being
        replaced, so workers re-read their topics from the start and skip up to the new
        cut-over.
        """
        offsets = list(
            self.client.scan_iter(match=self.layout.offsets_key_pattern(), count=_SCAN_COUNT)
        )
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.layout.meta_key(view))
        pipe.delete(self.layout.progress_key(view))
        for key in offsets:  # one DEL per key: a cluster may hold them on different nodes
            pipe.delete(key)
        pipe.hset(self.layout.progress_key(view), mapping=progress.to_hash())
        pipe.execute()

    def finish_materialization(self, view: ViewLike, meta: ViewMeta) -> None:
        """Record the completed materialization and drop its progress record."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.layout.meta_key(view), mapping=meta.to_hash())
        pipe.delete(self.layout.progress_key(view))
        pipe.execute()

    # -- stream offsets and the atomic commit -------------------------------------------------
    def read_offsets(self, group: str) -> dict[Partition, int]:
        """The next offset to read of every partition ``group`` has committed."""
        raw = self.client.hgetall(self.layout.offsets_key(group))
        return {parse_offset_field(_text(k)): int(v) for k, v in raw.items()}

    def commit(
        self,
        group: str,
        writes: Iterable[StateWrite],
        offsets: Mapping[Partition, int],
        expected: Mapping[Partition, int],
    ) -> bool:
        """Write ``writes`` and ``group``'s next ``offsets`` in one MULTI/EXEC transaction.

        Compare-and-set: only if every partition of ``expected`` has no stored offset or the
        expected one (where the batch started), checked under WATCH of the offsets hash, so a
        worker that stalled past a rebalance cannot overwrite its successor. Returns False,
        writing nothing, when a stored offset has moved. Needs a single Redis (not a cluster).
        """
        key = self.layout.offsets_key(group)
        new: HashMapping = {offset_field(t, p): str(o) for (t, p), o in offsets.items()}
        fields = [offset_field(t, p) for t, p in expected]
        starts = list(expected.values())
        hashes = [
            (self.layout.state_key(w.view, w.entity), state_fields(w.state, w.fingerprint))
            for w in writes
        ]
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    stored = pipe.hmget(key, fields) if fields else []
                    for start, have in zip(starts, stored, strict=True):
                        if have is not None and int(have) != start:
                            return False
                    pipe.multi()
                    for state_key, mapping in hashes:
                        pipe.hset(state_key, mapping=mapping)
                    if new:
                        pipe.hset(key, mapping=new)
                    pipe.execute()
                    return True
                except redis.WatchError:  # the offsets changed between WATCH and EXEC
                    continue

    # -- housekeeping -------------------------------------------------------------------------
    def clear(self) -> int:
        """Delete every key under the prefix (scratch prefixes of tests and parity runs)."""
        keys = list(self.client.scan_iter(match=self.layout.key_pattern(), count=_SCAN_COUNT))
        return sum(
            self._delete(keys[i : i + _DELETE_BATCH]) for i in range(0, len(keys), _DELETE_BATCH)
        )

    def _delete(self, keys: Sequence[bytes | str]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for k in keys:  # one DEL per key: keys of different entities may be in different slots
            pipe.delete(k)
        return sum(int(n) for n in pipe.execute())


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
