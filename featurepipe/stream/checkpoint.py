"""The worker's side of the online store: cached entity states and the batch commit.

A batch becomes durable in one step: ``Checkpoint.commit`` writes the touched states and the
next offset of every partition in the batch through ``StateStore.commit`` (one MULTI/EXEC,
compare-and-set on the offsets). A worker restarted after a crash seeks to the stored offsets
and finds the states that match them, so nothing is lost or counted twice.

**Bounded memory.** The cache is a least-recently-used map bounded by entries and by an
estimate of its memory (``footprint``); it is trimmed only after a commit, when every cached
state equals the stored one, so dropping an entry costs one read the next time its entity
appears. No entity's state may exceed ``MAX_STATE_BYTES`` serialized.

**Quarantine.** An entity whose stored state cannot be decoded (corrupt, or larger than
``MAX_STATE_BYTES``), or whose state grows past ``MAX_STATE_BYTES``, is quarantined instead of
stopping the worker: its state is replaced in the store by the reason (written with the
batch's commit), lookups of it raise ``UnservableEntityError``, and the worker dead-letters its
events until it is rebuilt (``featurepipe recover``). Every other entity is unaffected.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

from featurepipe.online.state_store import MAX_STATE_BYTES, Partition, StateStore, StateWrite
from featurepipe.stream.errors import StreamError
from featurepipe.stream.plans import ViewPlan
from featurepipe.stream.retry import Backoff

EntityKey = tuple[str, Any]  # (view name, entity)

CACHE_MAX_ENTRIES = 100_000
CACHE_MAX_BYTES = 256 << 20  # estimated memory of the cached states (``footprint``)
QUARANTINE_MAX_ENTRIES = 10_000  # quarantined entities remembered; a forgotten one is re-read

# quarantine reason categories (metric labels)
UNDECODABLE = "undecodable state"
STATE_TOO_LARGE = "state too large"
UNENCODABLE = "state not encodable"

# A cached state takes about this many bytes of memory per serialized byte, plus a fixed
# overhead per entry (cache slot, key tuple, State object): measured on ``user_spend`` states
# of 1 to 1,000 events (8.7x for a 1 KB state, 10.5x with overhead for a 230-byte one).
_MEMORY_PER_BYTE = 9
_MEMORY_PER_ENTRY = 512
_MAX_ERROR_CHARS = 200


def footprint(serialized: int) -> int:
    """Estimated memory (bytes) of a cached state whose serialized form has that size."""
    return _MEMORY_PER_ENTRY + _MEMORY_PER_BYTE * serialized


class Quarantine(NamedTuple):
    reason: str  # stored in place of the state; lookups show it
    category: str


class Checkpoint:
    """States of the entities this worker has seen, and their commit with the offsets.

    The cache is valid only while this worker owns the partitions it came from: drop it when
    partitions are revoked or a commit finds that another worker moved the offsets.
    """

    def __init__(
        self,
        store: StateStore,
        group: str,
        retry: Backoff,
        *,
        max_entries: int = CACHE_MAX_ENTRIES,
        max_bytes: int = CACHE_MAX_BYTES,
        max_state_bytes: int = MAX_STATE_BYTES,
    ) -> None:
        self.store = store
        self.group = group
        self.retry = retry
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_state_bytes = max_state_bytes
        self.cache: OrderedDict[EntityKey, Any] = OrderedDict()  # least recently used first
        self.sizes: dict[EntityKey, int] = {}  # footprint of each cached state
        self.cache_bytes = 0
        self.evictions = 0
        # entities whose state cannot be served -> the reason; their events are dead-lettered
        self.quarantined: OrderedDict[EntityKey, str] = OrderedDict()
        # quarantined since the last commit, to be stored with the next one
        self.new_quarantines: dict[EntityKey, tuple[ViewPlan, Quarantine]] = {}
        self._prepared: tuple[Mapping[EntityKey, ViewPlan], list[StateWrite]] | None = None

    def load(self, wanted: Mapping[EntityKey, ViewPlan]) -> None:
        """Cache the stored (or a new) state of every entity in ``wanted``, one round trip.

        Afterwards each entity of ``wanted`` is either in ``cache`` or in ``quarantined``."""
        cache, quarantined = self.cache, self.quarantined
        missing = []
        for ck, vp in wanted.items():
            if ck in cache:
                cache.move_to_end(ck)
            elif ck in quarantined:
                quarantined.move_to_end(ck)
            else:
                missing.append((ck, vp))
        if not missing:
            return
        pairs = [(vp.view, ck[1]) for ck, vp in missing]
        stored = self.retry(lambda: self.store.read_states(pairs))
        for (ck, vp), got in zip(missing, stored, strict=True):
            if got is None:
                self._cache(ck, vp.program.new_state(), 0)
                continue
            if got.fingerprint != vp.view.fingerprint and got.fingerprint is not None:
                raise StreamError(
                    f"view '{vp.view.name}': the online store holds version {got.fingerprint} "
                    f"for entity {ck[1]!r} but this worker serves {vp.view.fingerprint}; "
                    "materialize the new version (or use another prefix) before streaming"
                )
            if got.state is None:  # quarantined earlier: already stored
                quarantined[ck] = got.quarantine or "quarantined"
                continue
            blob = got.state
            if got.fingerprint is None:
                self.quarantine(ck, vp, Quarantine("the stored state has no version", UNDECODABLE))
            elif len(blob) > self.max_state_bytes:
                self.quarantine(
                    ck,
                    vp,
                    Quarantine(
                        f"the stored state is {len(blob):,} bytes, more than the "
                        f"{self.max_state_bytes:,} a worker decodes",
                        STATE_TOO_LARGE,
                    ),
                )
            else:
                try:
                    state = vp.program.loads(blob)
                except Exception as e:  # any decoding failure: corrupt bytes, wrong shape
                    self.quarantine(
                        ck,
                        vp,
                        Quarantine(
                            f"the stored state ({len(blob):,} bytes) cannot be decoded: "
                            f"{_describe(e)}",
                            UNDECODABLE,
                        ),
                    )
                else:
                    self._cache(ck, state, len(blob))

    def quarantine(self, ck: EntityKey, vp: ViewPlan, why: Quarantine) -> None:
        """Stop serving ``ck``: drop its cached state; the next commit stores ``why``."""
        if ck in self.cache:
            del self.cache[ck]
            self.cache_bytes -= self.sizes.pop(ck, 0)
        self.quarantined[ck] = why.reason
        self.new_quarantines[ck] = (vp, why)

    def prepare(self, touched: Mapping[EntityKey, ViewPlan]) -> dict[EntityKey, Quarantine]:
        """Serialize the ``touched`` states for the next ``commit``. A state larger than
        ``max_state_bytes`` (or one that cannot be serialized) is quarantined instead: those
        entities are returned, so that the caller can dead-letter their events of the batch."""
        writes = []
        over: dict[EntityKey, Quarantine] = {}
        cache, sizes = self.cache, self.sizes
        limit = self.max_state_bytes
        for ck, vp in touched.items():
            try:
                blob = vp.program.dumps(cache[ck])
            except Exception as e:
                why = Quarantine(f"the state cannot be serialized: {_describe(e)}", UNENCODABLE)
            else:
                n = len(blob)
                if n <= limit:
                    writes.append(StateWrite(vp.view, ck[1], blob, vp.view.fingerprint))
                    size = _MEMORY_PER_ENTRY + _MEMORY_PER_BYTE * n
                    self.cache_bytes += size - sizes.get(ck, 0)
                    sizes[ck] = size
                    continue
                why = Quarantine(
                    f"the state grew to {n:,} bytes, more than the {limit:,} allowed per entity",
                    STATE_TOO_LARGE,
                )
            over[ck] = why
            self.quarantine(ck, vp, why)
        self._prepared = (touched, writes)
        return over

    def commit(
        self,
        touched: Mapping[EntityKey, ViewPlan],
        expected: Mapping[Partition, int],
        offsets: Mapping[Partition, int],
        *,
        digests: Mapping[Partition, str] | None = None,
    ) -> bool:
        """Store the ``touched`` states (serialized by ``prepare``, called here if it was not),
        the quarantines found since the last commit and the next ``offsets``, if the stored
        offsets are still ``expected`` (where the batch started). False, with the cache
        dropped, when another worker has moved them: nothing of the batch was written (on a
        partitioned store, nothing of that partition and the ones after it).
        After a commit the cache is trimmed to its bounds."""
        if self._prepared is None or self._prepared[0] is not touched:
            self.prepare(touched)
        assert self._prepared is not None
        writes = self._prepared[1]
        self._prepared = None
        writes += [
            StateWrite(vp.view, ck[1], b"", vp.view.fingerprint, quarantine=why.reason)
            for ck, (vp, why) in self.new_quarantines.items()
        ]
        self.new_quarantines = {}
        attempt = uuid.uuid4().hex  # one id for every retry of this batch's commit
        if self.retry(
            lambda: self.store.commit(self.group, writes, offsets, expected, digests, attempt)
        ):
            self._trim()
            return True
        self.drop_cache()
        return False

    def _cache(self, ck: EntityKey, state: Any, serialized: int) -> None:
        size = footprint(serialized)
        self.cache[ck] = state
        self.cache_bytes += size - self.sizes.get(ck, 0)
        self.sizes[ck] = size

    def _trim(self) -> None:
        """Drop least recently used states beyond the bounds (all are stored: free to drop)."""
        cache, sizes = self.cache, self.sizes
        while cache and (len(cache) > self.max_entries or self.cache_bytes > self.max_bytes):
            ck, _ = cache.popitem(last=False)
            self.cache_bytes -= sizes.pop(ck, 0)
            self.evictions += 1
        while len(self.quarantined) > QUARANTINE_MAX_ENTRIES:
            self.quarantined.popitem(last=False)

    def offsets(self) -> dict[Partition, int]:
        """The next offset of every partition the group has committed."""
        return self.retry(lambda: self.store.read_offsets(self.group))

    def read_cutover(self, vp: ViewPlan) -> int | None:
        """The view's materialize cut-over; refuses a store materialized by another version."""
        meta = self.retry(lambda: self.store.read_meta(vp.view))
        if meta is None:
            return None
        if meta.fingerprint != vp.view.fingerprint:
            # the definitions changed since the store was built: say how to go on
            raise StreamError(
                f"view '{vp.view.name}': materialized version {meta.fingerprint} "
                f"differs from this worker's {vp.view.fingerprint}. To stream this version, "
                "rebuild the store for it with `featurepipe recover --until <cut-over>` (or "
                "`featurepipe materialize --until <cut-over>` when no stream worker feeds it), "
                "then start the workers; to keep the materialized version, run the workers "
                "with its definitions (`--defs`)"
            )
        return meta.materialized_until

    def drop_cache(self) -> None:
        self.cache.clear()
        self.sizes.clear()
        self.cache_bytes = 0
        self.quarantined.clear()
        self.new_quarantines = {}
        self._prepared = None


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "…"
