"""The online store on a Redis Cluster: one slot per Kafka partition (docs/online-store.md).

A Redis Cluster runs a transaction or a script only on keys of one slot, and the stream
worker's commit (states + offsets + the generation check) must stay atomic. So the unit of
atomicity becomes the unit a worker owns, a Kafka partition: every key of a partition carries
the hash tag ``{<topic>:<p>}``, and the partition's *head* hash holds what a commit checks and
moves (the generation, the group's position) next to its states::

    fp:{<topic>:<p>}:{<entity>}:<view>  HASH  s, f, q: the state, as on a single Redis
    fp:{<topic>:<p>}:head               HASH  gen = generation id, n = partition count,
                                              b:<view> = a materialization of view runs,
                                              o:<group> = <next offset>[:<digest>]
    fp:routing                          HASH  t:<view> = topic, n:<topic> = partition count
    fp:generation, fp:meta:<view>, fp:meta:<view>:materialize   as on a single Redis

``<p>`` is the partition Kafka's default partitioner gives the entity's messages
(``featurepipe.online.partitioning``), so a reader finds a state from the entity alone, and a
worker's commit is one script per partition of its batch. Per-partition atomicity is enough
for exactly-once: all of an entity's events are in one partition, so its state and the offset
that covers them commit together. A view without a stream is routed under the pseudo-topic
``~<view>``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.layout import (
    STATE_FIELDS,
    Entity,
    Generation,
    MaterializeProgress,
    OnlineStoreLayout,
    ViewLike,
    ViewMeta,
    encode_entity,
    glob_escape,
    parse_position_value,
    position_value,
    view_name,
)
from featurepipe.online.partitioning import entity_partition
from featurepipe.online.state_store import (
    Partition,
    Position,
    StateStore,
    StateWrite,
    StoredState,
    StoreIdentityError,
    as_text,
    check_generation,
    now_text,
    stored_state,
)

# slots of a view without a stream (no partitioner to follow): spread over the cluster
UNSTREAMED_PARTITIONS = 64
GEN = "gen"
COUNT = "n"

# One partition's commit: KEYS[1] = the head, KEYS[2..] = state keys. ARGV[1] = the bound
# generation ('' = unbound), ARGV[2] = the group's position field, ARGV[3] = the offset the
# batch started at ('' = none expected), ARGV[4] = the new position ('' = none), ARGV[5] = '1'
# when a missing position means it moved, ARGV[6] = the commit's attempt id (the same for every
# retry of one batch; '' = none), ARGV[7] = the attempt field, ARGV[8] = the partition count the
# writer routed with, then (kind, value, fingerprint) per state key: kind 's' writes a state,
# 'q' a quarantine. Returns {1} written, {2} written before by this very attempt (a retry after
# a lost reply), {0} moved (nothing written), {-1, gen} another generation, {-2, n} laid out for
# another partition count (nothing written).
_COMMIT_SCRIPT = """
local gen = redis.call('HGET', KEYS[1], 'gen')
if ARGV[1] ~= '' and gen ~= ARGV[1] then return {-1, gen or ''} end
local n = redis.call('HGET', KEYS[1], 'n')
if n ~= ARGV[8] then return {-2, n or ''} end
if ARGV[3] ~= '' then
  local have = redis.call('HGET', KEYS[1], ARGV[2])
  if not have then
    if ARGV[5] == '1' then return {0} end
  elseif string.match(have, '^[^:]*') ~= ARGV[3] then
    if ARGV[6] ~= '' and have == ARGV[4] and redis.call('HGET', KEYS[1], ARGV[7]) == ARGV[6] then
      return {2}
    end
    return {0}
  end
end
for i = 2, #KEYS do
  local j = 9 + (i - 2) * 3
  if ARGV[j] == 'q' then
    redis.call('HDEL', KEYS[i], 's')
    redis.call('HSET', KEYS[i], 'q', ARGV[j + 1], 'f', ARGV[j + 2])
  else
    redis.call('HSET', KEYS[i], 's', ARGV[j + 1], 'f', ARGV[j + 2])
  end
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[2], ARGV[4]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], ARGV[7], ARGV[6]) end
return {1}
"""
_COMMIT_SHA = hashlib.sha1(_COMMIT_SCRIPT.encode()).hexdigest()

# A starting position where none is: KEYS[1] = head, ARGV = bound generation ('' = unbound),
# field, value. Returns 1 set, 0 one was there, -1 another generation.
_INIT_SCRIPT = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then return -1 end
return redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
"""

# A new generation in one head: KEYS[1] = head, ARGV[1] = the previous generation id ('' =
# none), ARGV[2] = the new id, ARGV[3] = the partition count, ARGV[4] = '1' when every view of
# the head's topic is being rebuilt, ARGV[5..] = flags to set (b:<view> of views yet to be
# rebuilt). A head that is not the previous generation's (missing: its master restarted empty;
# another id: restored from an old snapshot) keeps its evidence unless its topic is rebuilt
# whole. Returns 1 stamped, 0 left alone.
_STAMP_SCRIPT = """
local gen = redis.call('HGET', KEYS[1], 'gen')
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'gen', ARGV[2], 'n', ARGV[3])
  for i = 5, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], '1') end
  return 1
end
if gen and gen == ARGV[1] then
  redis.call('HSET', KEYS[1], 'gen', ARGV[2])
  return 1
end
return 0
"""

# The generation record where none is (one key): returns its fields, or {} when created here.
_CREATE_GENERATION_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
redis.call('HSET', KEYS[1], unpack(ARGV))
return {}
"""


@dataclass
class Routing:
    """Where a view's states live: its topic, and the topic's partition count."""

    topics: dict[str, str] = field(default_factory=dict)  # view -> topic
    partitions: dict[str, int] = field(default_factory=dict)  # topic -> partition count


def pseudo_topic(view: str) -> str:
    """The routing topic of a view without a stream (no Kafka topic has this name)."""
    return f"~{view}"


@dataclass(frozen=True)
class PartitionedLayout(OnlineStoreLayout):
    """Key names of the partitioned layout; ``routing`` is filled by the store."""

    routing: Routing = field(default_factory=Routing, compare=False)

    def tag(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:{{{topic}:{partition}}}"

    def head_key(self, topic: str, partition: int) -> str:
        return f"{self.tag(topic, partition)}:head"

    def routing_key(self) -> str:
        return f"{self.prefix}:routing"

    def route(self, view: ViewLike) -> tuple[str, int]:
        name = view_name(view)
        topic = self.routing.topics.get(name)
        count = None if topic is None else self.routing.partitions.get(topic)
        if topic is None or count is None:
            raise OnlineStoreError(
                f"view '{name}' has no partition routing in the online store (key "
                f"'{self.routing_key()}'): it was never materialized or streamed into this "
                "Redis Cluster under this prefix (run `featurepipe materialize` first), or the "
                "master holding the routing restarted empty (rebuild with `featurepipe "
                "recover --until <cut-over>`)"
            )
        return topic, count

    def partition(self, view: ViewLike, entity: Entity) -> tuple[str, int]:
        topic, count = self.route(view)
        return topic, entity_partition(entity, count)

    def state_key(self, view: ViewLike, entity: Entity) -> str:
        topic, p = self.partition(view, entity)
        return self.state_key_in(topic, p, view, entity)

    def state_key_in(self, topic: str, partition: int, view: ViewLike, entity: Entity) -> str:
        """The state key of an entity whose partition is already known."""
        return f"{self.tag(topic, partition)}:{{{encode_entity(entity)}}}:{view_name(view)}"

    def state_key_pattern(self, view: ViewLike) -> str:
        return f"{glob_escape(self.prefix)}:{{*}}:{{*}}:{glob_escape(view_name(view))}"

    def entity_text(self, key: str | bytes, view: ViewLike) -> str | None:
        text = key.decode() if isinstance(key, bytes) else key
        head, tail = f"{self.prefix}:{{", f"}}:{view_name(view)}"
        if not (text.startswith(head) and text.endswith(tail)):
            return None
        inner = text[len(head) : len(text) - len(tail)]  # <topic>:<p>}:{<entity>
        _, sep, entity = inner.partition("}:{")
        return entity if sep and "{" not in entity and "}" not in entity else None

    def heads(self, topics: Iterable[str]) -> list[tuple[str, int, str]]:
        """(topic, partition, head key) of every partition of ``topics``."""
        out = []
        for topic in topics:
            for p in range(self.routing.partitions.get(topic, 0)):
                out.append((topic, p, self.head_key(topic, p)))
        return out


class _CountChanged(StoreIdentityError):
    """A head is laid out for another partition count than the routing this store read."""


class PartitionedStateStore(StateStore):
    """``StateStore`` on a Redis Cluster: the same contract, keys grouped by Kafka partition."""

    layout: PartitionedLayout
    partitioned = True

    def __init__(self, client: redis.RedisCluster, prefix: str) -> None:
        super().__init__(client, prefix)
        self.layout = PartitionedLayout(prefix)
        self.cluster = True
        self.transaction_reads = False
        self._loaded = False  # the routing is read on first use (no I/O in the constructor)

    # -- routing ----------------------------------------------------------------------------
    @property
    def routing(self) -> Routing:
        return self.layout.routing

    def load_routing(self) -> Routing:
        raw = {
            as_text(k): as_text(v)
            for k, v in self.client.hgetall(self.layout.routing_key()).items()
        }
        routing = self.layout.routing
        routing.topics = {k[2:]: v for k, v in raw.items() if k.startswith("t:")}
        routing.partitions = {k[2:]: int(v) for k, v in raw.items() if k.startswith("n:")}
        self._loaded = True
        return routing

    def register_routing(self, topics: Mapping[str, str], partitions: Mapping[str, int]) -> None:
        """Record each view's topic and each topic's partition count (first writer wins);
        refuses a view or topic recorded differently: its stored states are laid out for
        that, and reading them under another partitioning would find nothing."""
        key = self.layout.routing_key()
        pipe = self.client.pipeline(transaction=False)
        for view, topic in topics.items():
            pipe.hsetnx(key, f"t:{view_name(view)}", topic)
        for topic, count in partitions.items():
            if count < 1:
                raise OnlineStoreError(f"topic '{topic}': partition count {count} is not >= 1")
            pipe.hsetnx(key, f"n:{topic}", str(count))
        created = pipe.execute()[len(topics) :]
        routing = self.load_routing()
        for view, topic in topics.items():
            if routing.topics.get(view) != topic:
                raise StoreIdentityError(
                    f"view '{view}': the online store keeps its states by topic "
                    f"'{routing.topics.get(view)}', not '{topic}'. Use that topic, or rebuild "
                    "the store under another prefix"
                )
        for topic, count in partitions.items():
            if routing.partitions.get(topic) != count:
                raise StoreIdentityError(
                    f"topic '{topic}' has {count} partitions, but the online store's states "
                    f"are laid out for {routing.partitions.get(topic)}: the topic gained "
                    "partitions, so entities moved partition. Rebuild the store under a new "
                    "prefix (`featurepipe recover --prefix ...`) for the new count"
                )
        new = [t for t, c in zip(partitions, created, strict=True) if c]
        if new:
            self._lay_out(new)

    def _lay_out(self, topics: Sequence[str]) -> None:
        """Heads for topics this store has just met, in the current generation (if there is
        one yet: a first generation stamps them itself). Only where the topic has no head at
        all and none of its views is in the generation: otherwise the topic was known (its
        routing record was lost with a master) and a missing head is a lost one, which stays
        missing."""
        generation = self.read_generation()
        if generation is None:
            return
        for topic in topics:
            if self._views_of(topic) & set(generation.views):
                continue
            heads = self.layout.heads([topic])
            pipe = self.client.pipeline(transaction=False)
            for _, _, head in heads:
                pipe.exists(head)
            if any(pipe.execute()):
                continue
            pipe = self.client.pipeline(transaction=False)
            for _, _, head in heads:
                pipe.hsetnx(head, GEN, generation.id)
                pipe.hsetnx(head, COUNT, str(self.routing.partitions[topic]))
            pipe.execute()

    def _record_views(self, generation: Generation, views: Mapping[str, str]) -> None:
        """Add views (name -> fingerprint) a worker streams to the generation record: if the
        routing record and a topic's heads are lost later, the topic is not taken for a new
        one (``_lay_out``), and its views' lost cut-overs are refused (``read_meta``)."""
        merged = {**views, **generation.views}
        if merged != generation.views:
            self.client.hset(
                self.layout.generation_key(), "views", json.dumps(merged, sort_keys=True)
            )

    def recorded_partitions(self, topic: str) -> int | None:
        self._ensure_loaded()
        return self.routing.partitions.get(topic)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load_routing()

    def partition_of(self, view: ViewLike, entity: Entity) -> int | None:
        self._routed([view])
        return self.layout.partition(view, entity)[1]

    def _routed(self, views: Iterable[ViewLike]) -> None:
        """Reload the routing when a view is not in it (routed since this store was opened,
        e.g. by a materialize after a reader started)."""
        if not self._loaded or any(view_name(v) not in self.routing.topics for v in views):
            self.load_routing()

    def _topics(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self.routing.partitions)

    def _views_of(self, topic: str) -> set[str]:
        return {v for v, t in self.routing.topics.items() if t == topic}

    # -- materialization records ------------------------------------------------------------
    def start_materialization(self, view: ViewLike, progress: MaterializeProgress) -> None:
        """Mark ``view`` running in every head of its topic, drop every group's positions (as
        on a single Redis: workers re-read from the new cut-over), record the run."""
        topic, _ = self.layout.route(view)
        flag = f"b:{view_name(view)}"
        heads = self.layout.heads(self._topics())
        pipe = self.client.pipeline(transaction=False)
        for _, _, head in heads:
            pipe.hkeys(head)
        fields = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.layout.meta_key(view))
        pipe.delete(self.layout.progress_key(view))
        for (t, _, head), names in zip(heads, fields, strict=True):
            groups = [f for f in map(as_text, names) if f.startswith(("o:", "c:"))]
            if groups:
                pipe.hdel(head, *groups)
            if t == topic:
                pipe.hset(head, flag, "1")
                pipe.hdel(head, f"m:{view_name(view)}")
        pipe.hset(self.layout.progress_key(view), mapping=progress.to_hash())
        pipe.execute()

    def finish_materialization(self, view: ViewLike, meta: ViewMeta) -> None:
        topic, _ = self.layout.route(view)
        flag = f"b:{view_name(view)}"
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.layout.meta_key(view), mapping=meta.to_hash())
        pipe.delete(self.layout.progress_key(view))
        for _, _, head in self.layout.heads([topic]):
            pipe.hdel(head, flag)
            # each head remembers that the view was materialized, and up to when: a lost
            # meta key (its master restarted empty) is then told from a never-materialized view
            pipe.hset(head, f"m:{view_name(view)}", str(meta.materialized_until))
        pipe.execute()

    def read_meta(self, view: ViewLike) -> ViewMeta | None:
        """``StateStore.read_meta``; refuses when the record is gone but the partitions'
        heads say the view was materialized (the master holding the record lost it): a
        worker would otherwise apply events before the cut-over a second time."""
        meta = super().read_meta(view)
        if meta is not None:
            return meta
        self._routed([view])
        name = view_name(view)
        topic = self.routing.topics.get(name)
        if topic is None:
            generation = self.read_generation()
            if generation is not None and name in generation.views:
                raise StoreIdentityError(
                    f"view '{name}': the online store's generation knows it, but its routing "
                    f"and its materialization record are gone (key "
                    f"'{self.layout.routing_key()}'): the master holding them restarted empty. "
                    "Its cut-over is unknown; rebuild with `featurepipe recover --until "
                    "<cut-over>`"
                )
            return None
        pipe = self.client.pipeline(transaction=False)
        for _, _, head in self.layout.heads([topic]):
            pipe.hexists(head, f"m:{name}")
        if any(pipe.execute()):
            raise StoreIdentityError(
                f"view '{name}': the record of its materialization (key "
                f"'{self.layout.meta_key(name)}') is gone, but the partitions' heads say it was "
                "materialized: the master holding the record restarted empty or from an older "
                "snapshot. Its cut-over is unknown; rebuild with `featurepipe recover --until "
                "<cut-over>`"
            )
        return None

    # -- generation ---------------------------------------------------------------------------
    def new_generation(
        self, basis: str, views: Mapping[str, str], rebuilding: Iterable[str] = ()
    ) -> Generation:
        """A new epoch: the record, then its id in the heads, each one compared and set.

        A head moves to the new generation only if it is the previous one's, or if every
        view of its topic is rebuilt from now on (``views`` now, ``rebuilding`` next): a head
        that is missing or from another generation is the evidence of a lost or rolled-back
        master, and readers keep refusing its partition until the views there are rebuilt.
        Heads of a topic laid out again flag the views rebuilt next (``b:<view>``)."""
        previous = self.read_generation()
        merged = {**(previous.views if previous else {}), **views}
        generation = Generation(uuid.uuid4().hex, basis, now_text(), merged)
        key = self.layout.generation_key()
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(key)
        pipe.hset(key, mapping=generation.to_hash())
        pipe.execute()
        later = {view_name(v) for v in rebuilding}
        rebuilt = {view_name(v) for v in views} | later
        # a view the previous generation knew but the routing does not (its record was lost
        # with a master): no topic can be told complete, so none is laid out again
        known = set(previous.views) if previous is not None else set()
        complete = known <= set(self.routing.topics) | set(views)
        for topic in self._topics():
            whole = complete and self._views_of(topic) <= rebuilt
            flags = [f"b:{v}" for v in sorted(self._views_of(topic) & later)]
            args = [
                "" if previous is None else previous.id,
                generation.id,
                str(self.routing.partitions[topic]),
                "1" if whole else "0",
                *(flags if whole else []),
            ]
            for _, _, head in self.layout.heads([topic]):
                self.client.eval(_STAMP_SCRIPT, 1, head, *args)
        return generation

    def create_generation(self, basis: str, views: Mapping[str, str]) -> tuple[Generation, bool]:
        candidate = Generation(uuid.uuid4().hex, basis, now_text(), dict(views))
        flat: list[Any] = [x for kv in candidate.to_hash().items() for x in kv]
        got = self.client.eval(_CREATE_GENERATION_SCRIPT, 1, self.layout.generation_key(), *flat)
        if got:
            raw = got if isinstance(got, dict) else dict(zip(got[::2], got[1::2], strict=True))
            existing = Generation.from_hash(raw)
            self._record_views(existing, views)
            return existing, False
        # the first generation of this store: its heads (none can be lost: there were none
        # under a generation before; an old head keeps its foreign id and is refused)
        pipe = self.client.pipeline(transaction=False)
        for topic, _, head in self.layout.heads(self._topics()):
            pipe.hsetnx(head, GEN, candidate.id)
            pipe.hsetnx(head, COUNT, str(self.routing.partitions[topic]))
        pipe.execute()
        return candidate, True

    # -- reads with the store's checks ---------------------------------------------------------
    def read_states_in_generation(
        self,
        wanted: Sequence[tuple[ViewLike, Entity]],
        expected: str | None = None,
    ) -> list[StoredState | None]:
        try:
            return self._read_checked(wanted, expected)
        except _CountChanged:  # re-laid out since the routing was read: read it again, once
            self.load_routing()
            return self._read_checked(wanted, expected)

    def _read_checked(
        self,
        wanted: Sequence[tuple[ViewLike, Entity]],
        expected: str | None = None,
    ) -> list[StoredState | None]:
        """The states, with every check of a single Redis made per partition head: the head
        holds the store's generation (``expected`` when given) and the partition count the
        reader computed with, and no materialization of a read view runs there. One pipeline
        (one round trip per node)."""
        views = list(dict.fromkeys(view_name(v) for v, _ in wanted))
        self._routed(views)
        flags = [f"b:{v}" for v in views]
        keys: list[str] = []
        heads: dict[str, tuple[str, int]] = {}
        for view, entity in wanted:
            topic, p = self.layout.partition(view, entity)
            heads.setdefault(self.layout.head_key(topic, p), (topic, p))
            keys.append(self.layout.state_key_in(topic, p, view, entity))
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.layout.generation_key(), "id")
        for head in heads:
            pipe.hmget(head, [GEN, COUNT, *flags])
        for key in keys:
            pipe.hmget(key, STATE_FIELDS)
        generation, *rest = pipe.execute()
        head_rows = rest[: len(heads)]
        rows = rest[len(heads) :]
        current = None if generation is None else as_text(generation)
        check_generation(
            current,
            expected,
            self.prefix,
            lambda: any(v is not None for row in rows for v in row) or self._holds_keys(),
        )
        for (head, (topic, p)), row in zip(heads.items(), head_rows, strict=True):
            gen, count, *busy = row
            where = f"partition {topic}[{p}] (key '{head}')"
            if gen is None:
                raise StoreIdentityError(
                    f"the online store under prefix '{self.prefix}' lost {where}: the node "
                    "holding it restarted empty or from an older snapshot. Nothing of it can "
                    "be served; rebuild with `featurepipe recover --until <cut-over>`"
                )
            if as_text(gen) != current:
                raise StoreIdentityError(
                    f"{where} is generation {as_text(gen)}, not the store's {current}: it was "
                    "restored from an older snapshot, or a new generation is being written. "
                    "Retry; if it persists, rebuild with `featurepipe recover`"
                )
            if count is None or int(count) != self.routing.partitions[topic]:
                raise _CountChanged(
                    f"{where} is laid out for {None if count is None else int(count)} "
                    f"partitions, not {self.routing.partitions[topic]}: rebuild the store"
                )
            for name, b in zip(views, busy, strict=True):
                if b is not None:
                    raise StoreIdentityError(
                        f"view '{name}': a materialization is running or was interrupted; "
                        "its entities are not all written. Rerun `featurepipe materialize` "
                        "to finish"
                    )
        return [stored_state(row) for row in rows]

    def fetch_states_in_generation(
        self,
        wanted: Sequence[tuple[ViewLike, Entity]],
        expected: str | None = None,
    ) -> list[StoredState | None]:
        return self.read_states_in_generation(wanted, expected)

    def read_states(self, wanted: Iterable[tuple[ViewLike, Entity]]) -> list[StoredState | None]:
        pairs = list(wanted)
        self._routed(v for v, _ in pairs)
        return super().read_states(pairs)

    # -- positions and the commit -------------------------------------------------------------
    def read_positions(self, group: str) -> dict[Partition, Position]:
        self.load_routing()  # topics routed since this store was opened
        heads = self.layout.heads(self._topics())
        pipe = self.client.pipeline(transaction=False)
        for _, _, head in heads:
            pipe.hget(head, f"o:{group}")
        out: dict[Partition, Position] = {}
        for (topic, p, _), value in zip(heads, pipe.execute(), strict=True):
            if value is not None:
                out[(topic, p)] = Position(*parse_position_value(as_text(value)))
        return out

    def init_positions(self, group: str, positions: Mapping[Partition, int]) -> bool:
        """Set the positions that are not set, one head at a time (a cluster has no
        cross-slot transaction); True when this call set every one of them."""
        every = True
        for (topic, p), offset in positions.items():
            got = int(
                self.client.eval(
                    _INIT_SCRIPT,
                    1,
                    self._head(topic, p),
                    self.generation or "",
                    f"o:{group}",
                    position_value(offset, None),
                )
            )
            if got < 0:
                self._check_head_generation(topic, p)
            every = every and got == 1
        return every

    def reset_positions(self, group: str, positions: Mapping[Partition, int]) -> None:
        field_name = f"o:{group}"
        pipe = self.client.pipeline(transaction=False)
        for _, _, head in self.layout.heads(self._topics()):
            pipe.hdel(head, field_name)
        for (topic, p), offset in positions.items():
            pipe.hset(self._head(topic, p), field_name, position_value(offset, None))
        pipe.execute()

    def commit(
        self,
        group: str,
        writes: Iterable[StateWrite],
        offsets: Mapping[Partition, int],
        expected: Mapping[Partition, int],
        digests: Mapping[Partition, str] | None = None,
        attempt: str | None = None,
    ) -> bool:
        """``StateStore.commit`` as one script per partition of the batch, each atomic in its
        slot: check the head's generation and the group's position, write the partition's
        states and its new position. Partitions are independent (an entity's events are all
        in one), so a batch can land partly: False after the first partition whose position
        moved, the partitions before it written, exactly as if committed one by one.

        ``attempt`` identifies the batch across retries: a retry after a lost reply finds its
        own attempt id with its end position and counts as written; the same position written
        by another worker (the same messages applied again) counts as moved."""
        digests = digests or {}
        writes = list(writes)
        self._routed(w.view for w in writes)
        by_partition: dict[Partition, list[StateWrite]] = {tp: [] for tp in offsets}
        for w in writes:
            tp = self.layout.partition(w.view, w.entity)
            if tp not in by_partition:
                raise OnlineStoreError(
                    f"view '{view_name(w.view)}': entity {w.entity!r} belongs to partition "
                    f"{tp[0]}[{tp[1]}], which this batch did not read: its messages were not "
                    "produced with Kafka's default (murmur2) partitioner"
                )
            by_partition[tp].append(w)
        field_name = f"o:{group}"
        for tp in sorted(by_partition):
            topic, p = tp
            keys = [self._head(topic, p)]
            args: list[Any] = [
                self.generation or "",
                field_name,
                "" if tp not in expected else str(expected[tp]),
                position_value(offsets[tp], digests.get(tp)),
                "1" if self.generation is not None else "0",
                attempt or "",
                f"c:{group}",
                str(self.routing.partitions[topic]),
            ]
            for w in by_partition[tp]:
                keys.append(self.layout.state_key_in(topic, p, w.view, w.entity))
                if w.quarantine is None:
                    args += ["s", w.state, w.fingerprint]
                else:
                    args += ["q", w.quarantine, w.fingerprint]
            got = self._run_commit(keys, args)
            if int(got[0]) == -1:
                self._check_head_generation(topic, p)
            if int(got[0]) == -2:
                raise StoreIdentityError(
                    f"partition {topic}[{p}] is laid out for {as_text(got[1]) or 'no'} "
                    f"partitions, not the {self.routing.partitions[topic]} this worker routes "
                    "with: the store was rebuilt for another partition count. Restart the worker"
                )
            if int(got[0]) == 0:
                return False
        return True

    def _run_commit(self, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        try:
            return list(self.client.evalsha(_COMMIT_SHA, len(keys), *keys, *args))
        except redis.exceptions.NoScriptError:
            return list(self.client.eval(_COMMIT_SCRIPT, len(keys), *keys, *args))

    def _head(self, topic: str, partition: int) -> str:
        count = self.routing.partitions.get(topic)
        if count is None or not 0 <= partition < count:
            raise StoreIdentityError(
                f"partition {topic}[{partition}] is not in the online store's routing "
                f"({count} partitions recorded for '{topic}'): the topic gained partitions "
                "since the store was laid out; rebuild it for the new count"
            )
        return self.layout.head_key(topic, partition)

    def _check_head_generation(self, topic: str, partition: int) -> None:
        current = self.client.hget(self._head(topic, partition), GEN)
        where = f"partition {topic}[{partition}]"
        if current is None:
            raise StoreIdentityError(
                f"the online store under prefix '{self.prefix}' lost {where} (its node "
                "restarted empty or from an older snapshot): writing on would mix epochs; "
                "rebuild with `featurepipe recover --until <cut-over>`"
            )
        check_generation(as_text(current), self.generation, self.prefix)
        raise StoreIdentityError(f"{where}: generation changed during the commit; retry")


__all__ = [
    "UNSTREAMED_PARTITIONS",
    "PartitionedLayout",
    "PartitionedStateStore",
    "Routing",
    "pseudo_topic",
]
