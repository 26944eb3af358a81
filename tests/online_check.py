"""Online lookups against the batch plan, bit for bit: the check the streaming tests share."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import polars as pl

from featurepipe.compile.polars_aggs import TS, BatchProgram
from featurepipe.online.lookup import OnlineReader
from featurepipe.parity.harness import compare, normalize_events

HOUR = 3_600_000_000
DAY = 24 * HOUR


def online_vs_batch(
    view: Any,
    client: Any,
    prefix: str,
    good: pl.DataFrame,
    *,
    offsets: Sequence[int] = (0, HOUR, 8 * DAY),
    skip: Collection[Any] = (),
    require_found: bool = False,
) -> int:
    """Mismatches between online lookups and the batch plan over ``good``, for every entity of
    ``good`` (but ``skip``) at its newest event time plus each of ``offsets``. Raises whatever
    the lookup raises; with ``require_found`` every lookup must find its entity."""
    key = view.entity.key
    ev = normalize_events(view, good)
    last = ev.group_by(key).agg(pl.col(TS).max()).sort(key)
    if skip:
        last = last.filter(~pl.col(key).is_in(list(skip)))
    keys, times = [], []
    for e, t in last.iter_rows():
        for off in offsets:
            keys.append(e)
            times.append(t + off)
    reader = OnlineReader(client, [view], prefix)
    online = []
    for e, t in zip(keys, times, strict=True):
        row = reader.read([e], {view.name: view.feature_names}, at_us=t)[0]
        if require_found:
            assert row[f"{view.name}_found"] is True, e
        online.append(tuple(row[n] for n in view.feature_names))
    batch = BatchProgram(view.ir).features(ev.lazy(), pl.DataFrame({key: keys, TS: times}))
    features = compare(view.ir, batch, online, keys, times, [0] * len(keys))
    return sum(r.mismatched for r in features)
