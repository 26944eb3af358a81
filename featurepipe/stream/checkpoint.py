"""The worker's side of the online store: cached entity states and the batch commit.

A batch becomes durable in one step: ``Checkpoint.commit`` writes the touched states and the
next offset of every partition in the batch through ``StateStore.commit`` (one MULTI/EXEC,
compare-and-set on the offsets). A worker restarted after a crash seeks to the stored offsets
and finds the states that match them, so nothing is lost or counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from featurepipe.online.state_store import Partition, StateStore, StateWrite
from featurepipe.stream.errors import StreamError
from featurepipe.stream.plans import ViewPlan
from featurepipe.stream.retry import Backoff

EntityKey = tuple[str, Any]  # (view name, entity)


class Checkpoint:
    """States of the entities this worker has seen, and their commit with the offsets.

    The cache is valid only while this worker owns the partitions it came from: drop it when
    partitions are revoked or a commit finds that another worker moved the offsets.
    """

    def __init__(self, store: StateStore, group: str, retry: Backoff) -> None:
        self.store = store
        self.group = group
        self.retry = retry
        self.cache: dict[EntityKey, Any] = {}

    def load(self, wanted: Mapping[EntityKey, ViewPlan]) -> None:
        """Cache the stored (or a new) state of every entity in ``wanted``, one round trip."""
        missing = [(ck, vp) for ck, vp in wanted.items() if ck not in self.cache]
        if not missing:
            return
        pairs = [(vp.view, ck[1]) for ck, vp in missing]
        stored = self.retry(lambda: self.store.read_states(pairs))
        for (ck, vp), got in zip(missing, stored, strict=True):
            if got is None:
                self.cache[ck] = vp.program.new_state()
                continue
            if got.fingerprint != vp.view.fingerprint:
                raise StreamError(
                    f"view '{vp.view.name}': the online store holds version {got.fingerprint} "
                    f"for entity {ck[1]!r} but this worker serves {vp.view.fingerprint}; "
                    "materialize the new version (or use another prefix) before streaming"
                )
            self.cache[ck] = vp.program.loads(got.state)

    def commit(
        self,
        touched: Mapping[EntityKey, ViewPlan],
        expected: Mapping[Partition, int],
        offsets: Mapping[Partition, int],
    ) -> bool:
        """Store the ``touched`` states and the next ``offsets``, if the stored offsets are
        still ``expected`` (where the batch started). False, with the cache dropped, when
        another worker has moved them: nothing of the batch was written."""
        writes = [
            StateWrite(vp.view, ck[1], vp.program.dumps(self.cache[ck]), vp.view.fingerprint)
            for ck, vp in touched.items()
        ]
        if self.retry(lambda: self.store.commit(self.group, writes, offsets, expected)):
            return True
        self.cache.clear()
        return False

    def offsets(self) -> dict[Partition, int]:
        """The next offset of every partition the group has committed."""
        return self.retry(lambda: self.store.read_offsets(self.group))

    def read_cutover(self, vp: ViewPlan) -> int | None:
        """The view's materialize cut-over; refuses a store materialized by another version."""
        meta = self.retry(lambda: self.store.read_meta(vp.view))
        if meta is None:
            return None
        if meta.fingerprint != vp.view.fingerprint:
            raise StreamError(
                f"view '{vp.view.name}': materialized version {meta.fingerprint} "
                f"differs from this worker's {vp.view.fingerprint}"
            )
        return meta.materialized_until

    def drop_cache(self) -> None:
        self.cache.clear()
