"""The online store in Redis: the one reader and writer of its keys.

``StateStore`` owns every key and hash field (named in ``featurepipe.online.layout``, its private
helper): the per-entity states, the materialization records (``ViewMeta`` and its progress) and
the stream workers' offsets with their compare-and-set commit. ``materialize``, the stream
worker and online lookups call it; nothing else spells a key. See docs/online-store.md.

Redis errors propagate unchanged: callers decide whether to retry (the worker) or to report
(``materialize``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import redis

from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.layout import (
    CUTOVER_EVENT_TIME,
    DEFAULT_PREFIX,
    FINGERPRINT_FIELD,
    QUARANTINE_FIELD,
    STATE_FIELD,
    STATE_FIELDS,
    Entity,
    Generation,
    HashMapping,
    MaterializeProgress,
    OnlineStoreLayout,
    ViewLike,
    ViewMeta,
    encode_entity,
    offset_field,
    parse_offset_field,
    parse_position_value,
    position_value,
    quarantine_fields,
    state_fields,
    view_name,
)

__all__ = [
    "CUTOVER_EVENT_TIME",
    "DEFAULT_PREFIX",
    "MAX_STATE_BYTES",
    "Client",
    "Entity",
    "Generation",
    "MaterializeProgress",
    "Partition",
    "Position",
    "StateStore",
    "StateWrite",
    "StoreIdentityError",
    "StoreNotInitializedError",
    "StoredState",
    "ViewMeta",
    "open_store",
]

Client = redis.Redis | redis.RedisCluster
Partition = tuple[str, int]  # (topic, partition); kafka's TopicPartition is such a tuple

# The largest state blob a worker writes or a reader decodes: beyond it the entity is
# quarantined (workers) or refused (readers), so one entity cannot exhaust a process's memory.
MAX_STATE_BYTES = 8 << 20
_SCAN_COUNT = 1000
_DELETE_BATCH = 1000
_GENERATION_ID = "id"  # the generation hash field readers compare

# One transaction reads a lookup's states with the store's checks (``fetch_states_in_generation``):
# MULTI, HGET of the generation id, EXISTS of each view's progress key, HMGET of the state
# fields of each state key, EXEC. Atomic as a script would be, at a quarter of the server's
# time (a Lua script pays about 3 us per redis.call: 0.34 ms against 0.09 ms per 100 states on
# Redis 7), and packed here (``_read_transaction``): redis-py's packer spends about 1.6 us per
# command, 0.17 ms per 100 states. Reads only: it runs on replicas and under maxmemory; a
# server that refuses it (an ACL without multi/exec, a proxy without transactions) is read
# with the pipeline instead.
# states per transaction: bounds how long one lookup holds the server (a larger request is
# split; every part repeats the generation and progress checks)
_READ_CHUNK = 1000


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command(*args: bytes) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    return b"*%d\r\n%s" % (len(args), b"".join(map(_bulk, args)))


_MULTI = _command(b"MULTI")
_EXEC = _command(b"EXEC")


def _read_transaction(
    generation_key: bytes,
    generation_field: bytes,
    progress_keys: Sequence[bytes],
    state_keys: Sequence[bytes],
    state_fields: Sequence[bytes],
) -> bytes:
    """The read transaction's commands, packed: MULTI, HGET of the generation id, EXISTS per
    progress key, HMGET of the state fields per state key, EXEC (every name already encoded
    as the connection's packer encodes it: ``_names_encoder``)."""
    parts = [_MULTI, _command(b"HGET", generation_key, generation_field)]
    parts += [_command(b"EXISTS", k) for k in progress_keys]
    hmget = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(state_fields))
    fields = b"".join(map(_bulk, state_fields))
    parts += [b"%s$%d\r\n%s\r\n%s" % (hmget, len(k), k, fields) for k in state_keys]
    parts.append(_EXEC)
    return b"".join(parts)


class _NoTransaction(Exception):
    """The client cannot send a packed transaction (not a plain connection)."""


def _names_encoder(conn: Any) -> Callable[[str], bytes]:
    """How ``conn`` puts a str on the wire, as its own packer does: UTF-8 with hiredis's
    packer whatever the client's encoding, the client's encoding with redis-py's. Every
    key was written through that packer, so the transaction names them the same way."""
    probe = "\u00fc"
    wire = b"".join(conn.pack_command("ECHO", probe))
    for encode in (str.encode, conn.encoder.encode):
        if wire.endswith(_bulk(encode(probe))):
            return encode
    raise _NoTransaction


def _transact(
    conn: Any,
    packed: Callable[[Callable[[str], bytes]], bytes],
    commands: int,
    release: Callable[[Any], None] | None,
) -> list[Any]:
    """Send a transaction of ``commands`` queued commands on ``conn`` (``packed`` with its
    names encoded as the connection encodes them) and read every reply
    (``StateStore._run_read_transaction``); ``release`` gives the connection back."""
    complete = False
    try:
        if not isinstance(conn, redis.connection.AbstractConnection):
            complete = True
            raise _NoTransaction
        try:
            encode = _names_encoder(conn)
        except _NoTransaction:  # nothing sent: the connection is in step
            complete = True
            raise
        wire = packed(encode)
        conn.send_packed_command([wire])  # type: ignore[no-untyped-call]
        refused: redis.exceptions.ResponseError | None = None
        for _ in range(1 + commands):  # +OK, then +QUEUED per command
            try:
                conn.read_response()
            except redis.exceptions.ResponseError as e:
                refused = refused or e
        try:
            replies = conn.read_response()
        except redis.exceptions.ResponseError as e:  # EXECABORT, EXEC without MULTI
            refused = refused or e
        complete = True
    finally:
        if not complete:
            conn.disconnect()  # type: ignore[no-untyped-call]
        if release is not None:
            release(conn)
    if refused is not None:
        raise refused
    failed = next((r for r in replies if isinstance(r, redis.exceptions.ResponseError)), None)
    if failed is not None:
        raise failed
    return list(replies)


# states per script call of a materialization's writes
_SCRIPT_CHUNK = 1000
# One command writes many states of a materialization (``write_states_with_progress``): KEYS =
# the state keys; ARGV = the quarantine field, the state field, the fingerprint field, the
# fingerprint, then one state per key. Each key: its quarantine lifted, its state and
# fingerprint set, as the pipeline's HDEL + HSET would (two commands per state packed and
# parsed by the client: the script halves materialize's write time). Declared with flags (none):
# a server over its maxmemory refuses it before it writes anything, as it refuses the HSETs
# (without the line only its first write, the HDEL, would be checked).
_WRITE_SCRIPT = """#!lua
local q, s, f, fp = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
for i = 1, #KEYS do
  redis.call('HDEL', KEYS[i], q)
  redis.call('HSET', KEYS[i], s, ARGV[4 + i], f, fp)
end
return #KEYS
"""


class StoreIdentityError(OnlineStoreError):
    """The store is not the one this process started with (re-materialized, emptied, rolled
    back) or does not fit the broker: continuing would serve or write wrong values."""


class StoreNotInitializedError(StoreIdentityError):
    """The store holds no generation: never materialized or streamed into, or emptied."""


class Position(NamedTuple):
    """Where a worker group resumes a partition, and what the topic must hold just before."""

    offset: int  # the next offset to read
    digest: str | None  # digest of the message at offset - 1, when one was read


class StoredState(NamedTuple):
    """One entity's state for one view, as stored."""

    state: bytes | None  # ViewProgram.dumps; None when quarantined
    fingerprint: str | None  # of the view definition that wrote it
    quarantine: str | None = None  # why the state cannot be served, if it cannot


class StateWrite(NamedTuple):
    """A state to store: absolute bytes, so writing it twice is harmless.

    With ``quarantine`` set, the entity's state is dropped and replaced by that reason: readers
    then refuse the entity (a clear error) instead of serving a partial value.
    """

    view: ViewLike
    entity: Entity
    state: bytes
    fingerprint: str
    quarantine: str | None = None


class StateStore:
    """Reads and writes the online store under one key prefix."""

    partitioned = False  # keys grouped by Kafka partition (a Redis Cluster store)

    def __init__(self, client: Client, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.layout = OnlineStoreLayout(prefix)
        # when bound (``bind``), every commit first checks the store is still this generation
        self.generation: str | None = None
        # a cluster pipeline spans nodes without ordering
        self.cluster = isinstance(client, redis.RedisCluster)
        # lookups read with one transaction (not on a cluster: its keys would have to share a
        # slot); cleared for good when the server refuses transactions
        self.transaction_reads = isinstance(client, redis.Redis)
        # materialize writes its states with one script call per chunk (same conditions)
        self.scripted_writes = not self.cluster

    @property
    def prefix(self) -> str:
        return self.layout.prefix

    # -- routing (a partitioned store only) ---------------------------------------------------
    def register_routing(self, topics: Mapping[str, str], partitions: Mapping[str, int]) -> None:
        """Record each view's topic and each topic's partition count. A single Redis keeps
        states by entity alone and needs neither; a Redis Cluster store does (its slots are
        Kafka partitions, ``featurepipe.online.cluster_store``)."""

    def recorded_partitions(self, topic: str) -> int | None:
        """The partition count a partitioned store recorded for ``topic``; None otherwise."""
        return None

    def partition_of(self, view: ViewLike, entity: Entity) -> int | None:
        """The Kafka partition whose slot holds the entity's state; None on a single Redis
        (any partition may carry an entity's events)."""
        return None

    # -- entity states -----------------------------------------------------------------------
    def read_states(self, wanted: Iterable[tuple[ViewLike, Entity]]) -> list[StoredState | None]:
        """The states of (view, entity) pairs in one round trip; None where there is none."""
        pipe = self.client.pipeline(transaction=False)
        for view, entity in wanted:
            pipe.hmget(self.layout.state_key(view, entity), STATE_FIELDS)
        return [stored_state(row) for row in pipe.execute()]

    def write_states_with_progress(
        self,
        view: ViewLike,
        fingerprint: str,
        states: Sequence[tuple[Entity, bytes]],
        progress: MaterializeProgress,
    ) -> None:
        """Every state, then the progress record that claims them, written only once every
        state write succeeded: it never claims an entity whose state was not written (a
        non-transactional pipeline runs every command and only then reports the first error).
        """
        progress_key = self.layout.progress_key(view)
        record = progress.to_hash()
        refused = False
        if self.scripted_writes:
            if self._write_states_scripted(view, fingerprint, states):
                self.client.hset(progress_key, mapping=record)  # once every state is written
                return
            refused = True
        pipe = self.client.pipeline(transaction=False)
        for entity, blob in states:
            key = self.layout.state_key(view, entity)
            pipe.hdel(key, QUARANTINE_FIELD)  # a rebuilt state lifts a quarantine
            pipe.hset(key, mapping=state_fields(blob, fingerprint))
        pipe.execute()
        self.client.hset(progress_key, mapping=record)
        if refused:  # the pipeline wrote what the script could not: scripts are refused
            self.scripted_writes = False

    def _write_states_scripted(
        self, view: ViewLike, fingerprint: str, states: Sequence[tuple[Entity, bytes]]
    ) -> bool:
        """The states written by ``_WRITE_SCRIPT``, ``_SCRIPT_CHUNK`` per call, in one round
        trip; False (nothing to trust: the pipeline rewrites them all) when a call fails (the
        server refuses scripts, or a key of the wrong type, which the pipeline raises)."""
        fields = (QUARANTINE_FIELD, STATE_FIELD, FINGERPRINT_FIELD)
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(states), _SCRIPT_CHUNK):
            chunk = states[start : start + _SCRIPT_CHUNK]
            keys = [self.layout.state_key(view, entity) for entity, _ in chunk]
            pipe.eval(_WRITE_SCRIPT, len(keys), *keys, *fields, fingerprint, *(b for _, b in chunk))
        try:
            pipe.execute()
        except redis.exceptions.ResponseError:
            return False
        return True

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

    # -- generation: which epoch of the store this is -----------------------------------------
    def read_generation(self) -> Generation | None:
        raw = self.client.hgetall(self.layout.generation_key())
        return Generation.from_hash(raw) if raw else None

    def new_generation(
        self, basis: str, views: Mapping[str, str], rebuilding: Iterable[str] = ()
    ) -> Generation:
        """Start a new epoch (materialize, recover); views of the previous epoch are kept.
        ``rebuilding``: other views this run rebuilds too (a partitioned store uses it)."""
        previous = self.read_generation()
        merged = {**(previous.views if previous else {}), **views}
        generation = Generation(uuid.uuid4().hex, basis, now_text(), merged)
        key = self.layout.generation_key()
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=generation.to_hash())
        pipe.execute()
        return generation

    def create_generation(self, basis: str, views: Mapping[str, str]) -> tuple[Generation, bool]:
        """The current generation, creating it if there is none; True when created here."""
        key = self.layout.generation_key()
        candidate = Generation(uuid.uuid4().hex, basis, now_text(), dict(views))
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.hgetall(key)
                    if raw:
                        return Generation.from_hash(raw), False
                    pipe.multi()
                    pipe.hset(key, mapping=candidate.to_hash())
                    pipe.execute()
                    return candidate, True
                except redis.WatchError:
                    continue

    def bind(self, generation: str) -> None:
        """Refuse every later commit unless the store is still ``generation``."""
        self.generation = generation

    def require_generation(self, expected: str | None = None) -> Generation:
        """The current generation; ``StoreNotInitializedError`` if there is none,
        ``StoreIdentityError`` if it is not ``expected``."""
        generation = self.read_generation()
        check_generation(
            None if generation is None else generation.id,
            expected,
            self.layout.prefix,
            self._holds_keys,
        )
        assert generation is not None
        return generation

    def read_states_in_generation(
        self,
        wanted: Sequence[tuple[ViewLike, Entity]],
        expected: str | None = None,
    ) -> list[StoredState | None]:
        """``read_states`` with the store's checks in the same round trip: a reader never
        answers from a store that was emptied, is not the generation it expects, or holds a
        view whose materialization has not completed (its missing entities are not absent,
        only not written yet)."""
        views = list(dict.fromkeys(view_name(v) for v, _ in wanted))
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.layout.generation_key(), _GENERATION_ID)
        for name in views:
            pipe.exists(self.layout.progress_key(name))
        for view, entity in wanted:
            pipe.hmget(self.layout.state_key(view, entity), STATE_FIELDS)
        generation, *rest = pipe.execute()
        rows = rest[len(views) :]
        self._check_read(views, generation, rest[: len(views)], rows, expected)
        return [stored_state(row) for row in rows]

    def fetch_states_in_generation(
        self,
        wanted: Sequence[tuple[ViewLike, Entity]],
        expected: str | None = None,
    ) -> list[StoredState | None]:
        """``read_states_in_generation`` in one transaction (per ``_READ_CHUNK`` states)
        packed here, instead of a pipeline of commands packed and parsed one by one by
        redis-py: the same keys, answers and checks, read atomically (a split request repeats
        the checks in every part, and its parts must share one generation). Falls back to the
        pipeline on a cluster, on a lost connection (the pipeline reconnects or raises as
        before) and on a server that refuses transactions (then for good)."""
        if not self.transaction_reads:
            return self.read_states_in_generation(wanted, expected)
        views = list(dict.fromkeys(view_name(v) for v, _ in wanted))
        head = [self.layout.generation_key(), *(self.layout.progress_key(v) for v in views)]
        state_key = self.layout.state_key
        out: list[StoredState | None] = []
        for start in range(0, max(len(wanted), 1), _READ_CHUNK):
            keys = [state_key(v, e) for v, e in wanted[start : start + _READ_CHUNK]]
            try:
                replies = self._run_read_transaction(head, keys)
            except _NoTransaction:  # a client whose connections cannot carry it
                self.transaction_reads = False
                return self.read_states_in_generation(wanted, expected)
            except redis.exceptions.ResponseError:
                # refused (ACL, no transactions) or a key of the wrong type: the pipeline
                # answers or raises exactly as before; only its success disables transactions
                got = self.read_states_in_generation(wanted, expected)
                self.transaction_reads = False
                return got
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                # the pipeline goes through redis-py's retries and reconnection
                return self.read_states_in_generation(wanted, expected)
            rows = replies[len(head) :]
            self._check_read(views, replies[0], replies[1 : len(head)], rows, expected)
            expected = as_text(replies[0])  # every part from the generation of the first
            out += [stored_state(row) for row in rows]
        return out

    def _run_read_transaction(self, head: Sequence[str], keys: Sequence[str]) -> list[Any]:
        """The replies of one read transaction (``_read_transaction``; ``head``: the
        generation key, then the progress keys): the generation id, an EXISTS per progress
        key, the fields of each state key. Raises the server's error when it refuses the
        transaction or a command fails (a key of the wrong type), once every reply is read:
        the connection stays in step, else it is closed. ``_NoTransaction`` for a client
        whose connections are not plain ones (client-side caching proxies them)."""
        client = self.client
        if not isinstance(client, redis.Redis):  # a cluster reads with the pipeline
            raise _NoTransaction

        def packed(encode: Callable[[str], bytes]) -> bytes:
            return _read_transaction(
                encode(head[0]),
                encode(_GENERATION_ID),
                [encode(k) for k in head[1:]],
                [encode(k) for k in keys],
                [encode(f) for f in STATE_FIELDS],
            )

        single = client.connection  # a single-connection client's own: shared by threads
        if single is not None:
            with client.single_connection_lock:
                return _transact(single, packed, len(head) + len(keys), release=None)
        pool = client.connection_pool
        return _transact(pool.get_connection(), packed, len(head) + len(keys), pool.release)

    def _check_read(
        self,
        views: Sequence[str],
        generation: Any,
        running: Sequence[Any],
        rows: Sequence[Sequence[Any]],
        expected: str | None,
    ) -> None:
        """The checks of a read: the store holds generation ``expected`` (any when None) and
        no view of ``views`` has a materialization running (``running``: EXISTS per view)."""
        check_generation(
            None if generation is None else as_text(generation),
            expected,
            self.layout.prefix,
            lambda: any(v is not None for row in rows for v in row) or self._holds_keys(),
        )
        for name, busy in zip(views, running, strict=True):
            if busy:
                raise StoreIdentityError(
                    f"view '{name}': a materialization is running or was interrupted; its "
                    "entities are not all written. Rerun `featurepipe materialize` to finish"
                )

    def _holds_keys(self) -> bool:
        """Whether any key lives under the prefix (a SCAN: for error messages only)."""
        pattern = self.layout.key_pattern()
        return next(iter(self.client.scan_iter(match=pattern, count=_SCAN_COUNT)), None) is not None

    def has_states(self, view: ViewLike) -> bool:
        """Whether any entity of ``view`` has a state (a bounded SCAN; for start-up checks)."""
        pattern = self.layout.state_key_pattern(view)
        return next(iter(self.client.scan_iter(match=pattern, count=_SCAN_COUNT)), None) is not None

    # -- stream offsets and the atomic commit -------------------------------------------------
    def read_offsets(self, group: str) -> dict[Partition, int]:
        """The next offset to read of every partition ``group`` has committed."""
        return {tp: p.offset for tp, p in self.read_positions(group).items()}

    def read_positions(self, group: str) -> dict[Partition, Position]:
        """Where ``group`` resumes every partition it has a position for."""
        raw = self.client.hgetall(self.layout.offsets_key(group))
        return {
            parse_offset_field(as_text(k)): Position(*parse_position_value(as_text(v)))
            for k, v in raw.items()
        }

    def init_positions(self, group: str, positions: Mapping[Partition, int]) -> bool:
        """Record starting positions for partitions that have none, all or nothing: False
        (nothing written) when any of them already has one (another worker was first)."""
        key = self.layout.offsets_key(group)
        fields = [offset_field(t, p) for t, p in positions]
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key, self.layout.generation_key())
                    if any(v is not None for v in pipe.hmget(key, fields)):
                        return False
                    self._check_bound(pipe)
                    pipe.multi()
                    pipe.hset(
                        key,
                        mapping={
                            offset_field(t, p): position_value(o, None)
                            for (t, p), o in positions.items()
                        },
                    )
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def reset_positions(self, group: str, positions: Mapping[Partition, int]) -> None:
        """Replace ``group``'s positions (``recover``): these partitions, these offsets."""
        key = self.layout.offsets_key(group)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if positions:
            pipe.hset(
                key,
                mapping={
                    offset_field(t, p): position_value(o, None) for (t, p), o in positions.items()
                },
            )
        pipe.execute()

    def _check_bound(self, pipe: Any) -> None:
        """Inside WATCH: raise if the store is no longer the bound generation."""
        if self.generation is None:
            return
        current = pipe.hget(self.layout.generation_key(), "id")
        check_generation(
            None if current is None else as_text(current), self.generation, self.layout.prefix
        )

    def commit(
        self,
        group: str,
        writes: Iterable[StateWrite],
        offsets: Mapping[Partition, int],
        expected: Mapping[Partition, int],
        digests: Mapping[Partition, str] | None = None,
        attempt: str | None = None,
    ) -> bool:
        """Write ``writes`` and ``group``'s next ``offsets`` in one MULTI/EXEC transaction.

        Compare-and-set: only if every partition of ``expected`` has no stored offset or the
        expected one (where the batch started), checked under WATCH of the offsets hash, so a
        worker that stalled past a rebalance cannot overwrite its successor. Returns False,
        writing nothing, when a stored offset has moved. Needs a single Redis (not a cluster).

        ``digests`` (of the last message read per partition) are stored with the offsets so a
        restart can check that the topic still holds that message. When the store is bound to
        a generation, a different or missing one raises ``StoreIdentityError``: the store was
        emptied or replaced under the worker, and writing on would mix two epochs.
        ``attempt`` (the batch's id across retries) is for a partitioned store's per-partition
        commits; one transaction needs none.
        """
        key = self.layout.offsets_key(group)
        digests = digests or {}
        new: HashMapping = {
            offset_field(t, p): position_value(o, digests.get((t, p)))
            for (t, p), o in offsets.items()
        }
        fields = [offset_field(t, p) for t, p in expected]
        starts = list(expected.values())
        hashes = [
            (
                self.layout.state_key(w.view, w.entity),
                state_fields(w.state, w.fingerprint)
                if w.quarantine is None
                else quarantine_fields(w.quarantine, w.fingerprint),
                w.quarantine is not None,
            )
            for w in writes
        ]
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key, self.layout.generation_key())
                    self._check_bound(pipe)
                    stored = pipe.hmget(key, fields) if fields else []
                    for start, have in zip(starts, stored, strict=True):
                        if have is None and self.generation is not None:
                            return False  # a position this worker resumed from has vanished
                        if have is not None and parse_position_value(as_text(have))[0] != start:
                            return False
                    pipe.multi()
                    for state_key, mapping, quarantined in hashes:
                        if quarantined:
                            pipe.hdel(state_key, STATE_FIELD)
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


def open_store(client: Client, prefix: str = DEFAULT_PREFIX) -> StateStore:
    """The store for ``client``: keyed by entity on a single Redis, by Kafka partition on a
    Redis Cluster (``featurepipe.online.cluster_store``)."""
    if isinstance(client, redis.RedisCluster):
        from featurepipe.online.cluster_store import PartitionedStateStore

        return PartitionedStateStore(client, prefix)
    return StateStore(client, prefix)


def as_text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def stored_state(row: Sequence[Any]) -> StoredState | None:
    blob, fingerprint, quarantine = row
    if blob is None and quarantine is None:
        return None
    return StoredState(
        blob,
        None if fingerprint is None else as_text(fingerprint),
        None if quarantine is None else as_text(quarantine),
    )


def check_generation(
    current: str | None,
    expected: str | None,
    prefix: str,
    holds_keys: Callable[[], bool] | None = None,
) -> None:
    """Raise unless the store is generation ``expected`` (any generation when None).

    Without a generation, ``holds_keys`` (whether any key lives under the prefix) tells a store
    never written from one that was emptied or rolled back, for the message only: both are
    refused. A process bound to a generation (``expected``) saw it vanish: emptied."""
    if current is None:
        if expected is None and holds_keys is not None and not holds_keys():
            raise StoreNotInitializedError(
                f"the online store under prefix '{prefix}' holds no generation and no key: "
                "nothing was materialized there. Run `featurepipe materialize --until "
                "<cut-over>` first, or check the prefix (--prefix) and the Redis URL; if this "
                "store was emptied (FLUSHALL, a Redis restart without persistence), "
                "`featurepipe recover --until <cut-over>` rebuilds it"
            )
        raise StoreNotInitializedError(
            f"the online store under prefix '{prefix}' holds no generation: it was emptied or "
            "rolled back (a Redis restart without persistence, FLUSHALL, an older snapshot "
            "restored). Nothing it holds can be served; rebuild it with "
            "`featurepipe recover --until <cut-over>`"
        )
    if expected is not None and current != expected:
        raise StoreIdentityError(
            f"the online store under prefix '{prefix}' is generation {current}, not {expected}: "
            "it was re-materialized or recovered since this process started. Restart it "
            "(a worker resumes from the new generation's positions)"
        )
