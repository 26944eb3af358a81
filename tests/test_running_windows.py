"""What the query keeps on a state between queries, for windows holding many events:

- running sums over the buffer (``compile.python_state.Prefix``): a window's count, sum, mean,
  var or std read as the difference of two running sums of exact integers;
- the counted values of a sliding window (``DistinctWindow``): a count_distinct moved from
  the last window answered to the next, adding the records that enter and removing those that
  leave; for a lifetime count_distinct (``LifetimeDistinct``), the buffer's values counted and
  how many of them the lifetime set lacks, kept exact as events enter, leave the buffer for
  the set, or (very late) go to the set directly; for a min or max (``ExtremeWindow``), the
  window's values counted and a heap of them.

A replay that queries after every event (``featurepipe parity``) thus pays for each event
about once instead of once per query; a lookup builds both from the decoded buffer. Ingest
keeps them true to the buffer: a late event inserted among the covered records cuts the sums
back (and is counted), one inserted before them moves them, an eviction drops the records it
removed.

Each answer of a state queried after every event is held, bit for bit, to a fresh decode of
the same state's bytes (built at once, as a lookup builds them), to the one-by-one fold (no
running sums, no bulk code), and, for the whole log, to the batch plan (Polars).
"""

from __future__ import annotations

import math
import struct
from typing import Any
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile import python_state
from featurepipe.compile.python_state import ViewProgram
from featurepipe.parity.harness import normalize_events
from featurepipe.testing import assert_parity
from tests.schema import at, frame, row, scaled, view

SUMMED: dict[str, Any] = {
    "n_x_where": lambda t: fp.count(t.x, window="10s", where=t.b),
    "n_where": lambda t: fp.count(window="1m", where=t.b),
    "sum_x": lambda t: fp.sum(t.x, window="1m"),
    "sum_n_where": lambda t: fp.sum(t.n, window="10s", where=t.b),
    "mean_x": lambda t: fp.mean(t.x, window="10s"),
    "mean_n": lambda t: fp.mean(t.n),
    "var_x": lambda t: fp.var(t.x, window="1m"),
    "std_n_where": lambda t: fp.std(t.n, window="1m", where=t.b),
    "sum_n_hop": lambda t: fp.sum(t.n, window="1m", hop="10s"),
    "n_x_hop": lambda t: fp.count(t.x, window="20s", hop="10s"),
    "distinct_x": lambda t: fp.count_distinct(t.x, window="10s"),
    "distinct_s_where": lambda t: fp.count_distinct(t.s, window="1m", where=t.b),
    "distinct_n_hop": lambda t: fp.count_distinct(t.n, window="20s", hop="10s"),
    "max_x": lambda t: fp.max(t.x, window="10s"),
    "min_n_where": lambda t: fp.min(t.n, window="1m", where=t.b),
    "max_ts": lambda t: fp.max(t.ts, window="1m"),
    "min_x_hop": lambda t: fp.min(t.x, window="20s", hop="10s"),
    "distinct_s_ever": lambda t: fp.count_distinct(t.s),
    "distinct_x_ever_where": lambda t: fp.count_distinct(t.x, where=t.b),
}
VIEW = view(SUMMED, lateness="30s", name="summed")
# no lifetime sum: the running sums start where the widest window does, not at the buffer's
# first record, so late events land before them too
WINDOWED = view(
    {k: f for k, f in SUMMED.items() if k != "mean_n"}, lateness="30s", name="summed_windows"
)

FLOATS = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, 1.5, -2.5, 0.1, 1e16, 5e-324]),
    # saturation flags: the running sums of their group give way to the fold
    st.sampled_from([math.inf, -math.inf, math.nan, 1e300]),
    st.floats(-1e6, 1e6, allow_nan=False),
)
INTS = st.one_of(
    st.none(),
    st.sampled_from([0, 1, -1, 7, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)


@st.composite
def logs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One entity, up to 80 events over 3 minutes (windows of 10 s to 1 min, lateness 30 s:
    evictions all along), mostly in order, some late by up to 30 s, a few ten minutes late."""
    n = draw(st.integers(0, 80))
    rows = [
        row(
            x=draw(FLOATS),
            n=draw(INTS),
            s=draw(
                st.one_of(st.none(), st.sampled_from(["", "a", "ß", "中"]), st.text(max_size=2))
            ),
            b=draw(st.one_of(st.none(), st.booleans())),
            ts=at(draw(st.integers(0, 180))),
        )
        for _ in range(n)
    ]
    rows.sort(key=lambda r: r["ts"])
    late = draw(st.lists(st.tuples(st.integers(0, 79), st.integers(1, 6)), max_size=8))
    for i, back in late:
        if i + back < n:
            rows[i], rows[i + back] = rows[i + back], rows[i]
    # a few events older than the buffer reaches (very late): straight into the lifetime
    # accumulators
    for i in draw(st.lists(st.integers(0, 80), max_size=3)):
        old = row(s=draw(st.sampled_from(["a", "ß", "old"])), x=1.5, b=True, ts=at(-600))
        rows.insert(min(i, len(rows)), old)
    return rows


# the query times after each event, in seconds from it: in any order, so that the running
# sums are read as ingest left them (not only after a query that started them afresh)
OFFSETS = st.lists(st.sampled_from([-25, -3, 0, 1e-6, 7, 45, 90]), min_size=1, max_size=7)


def _bits(v: Any) -> Any:
    return ("float", struct.pack("<d", v)) if isinstance(v, float) else v


def _us(seconds: float) -> int:
    return int(at(seconds).timestamp() * 1_000_000)


def _replay_querying(
    v: fp.FeatureView, rows: list[dict[str, Any]], offsets: list[float], bulk_from: int
) -> None:
    """Ingest the events one by one into one state; after each, query it at a few times
    (before, at and after the event; older times still answerable) and compare."""
    prog = ViewProgram(v.ir, bulk_from=bulk_from)
    plain = ViewProgram(v.ir, bulk_from=10**9)  # the one-by-one fold
    state = prog.new_state()
    shadow = plain.new_state()
    events = list(normalize_events(v, frame(rows)).iter_rows(named=True))
    top = -(2**63)
    for seq, event in enumerate(events):
        prog.ingest(state, event, seq)
        plain.ingest(shadow, event, seq)
        ts, top = event["ts"], max(top, event["ts"])
        # from the event and from the newest event so far (after a late event, a window
        # reaching back beyond it: the running sums moved, not cut)
        for t in (base + round(s * 1_000_000) for base in (ts, top) for s in offsets):
            if not prog.can_answer(state, t):
                continue
            got = [_bits(v) for v in prog.query(state, t)]
            fresh = [_bits(v) for v in prog.query(prog.loads(prog.dumps(state)), t)]
            folded = [_bits(v) for v in plain.query(shadow, t)]
            assert got == fresh == folded, (seq, t)


@settings(max_examples=scaled(150), deadline=None)
@given(rows=logs(), offsets=OFFSETS)
def test_running_sums_kept_across_events_equal_fresh_ones_and_the_fold(
    rows: list[dict[str, Any]], offsets: list[float]
) -> None:
    for v in (VIEW, WINDOWED):
        # every window summed, empty ones included; then only windows of 4 events or more
        _replay_querying(v, rows, offsets, bulk_from=0)
        _replay_querying(v, rows, offsets, bulk_from=4)


@settings(max_examples=scaled(60), deadline=None)
@given(rows=logs())
def test_running_sums_match_the_batch_plan(rows: list[dict[str, Any]]) -> None:
    with patch.object(python_state, "BULK_FROM", 0):
        assert_parity(VIEW, frame(rows))


def test_running_sums_by_hand() -> None:
    """n = 1, 2, ..., 20 at 0..19 s, b True on even n; queried at 20 s after each event:

    - at the end, sum_n_where over 10 s (events at 10..19 s, n = 11..20, even: 12 + 14 + 16 +
      18 + 20) = 80; n_where over 1 min: 10 even values; mean_n: 210 / 20 = 10.5.
    - then a late event n = 1000 at 15 s, b True (inside the covered records): the 10 s sum
      becomes 1080, the lifetime mean 1210 / 21.
    - then an event at 200 s evicts everything before 200 - 60 - 30 = 110 s: at 201 s the
      10 s and 1 min sums see only n = 7 (b True), the lifetime mean (1210 + 7) / 22.
    - then a NaN x (a saturation flag) in the 1 min window: sum_x is NaN, sum of n unharmed."""
    prog = ViewProgram(VIEW.ir, bulk_from=0)
    state = prog.new_state()
    seq = 0
    log: list[dict[str, Any]] = []

    def ingest(**fields: Any) -> None:
        nonlocal seq
        log.append(row(**fields))
        ev = normalize_events(VIEW, frame([row(**fields)])).row(0, named=True)
        prog.ingest(state, ev, seq)
        seq += 1

    def ask(seconds: float) -> dict[str, Any]:
        return dict(zip(prog.feature_names, prog.query(state, _us(seconds)), strict=True))

    for i in range(20):
        ingest(n=i + 1, x=1.0, b=(i + 1) % 2 == 0, ts=at(i))
        ask(20)  # the running sums built, then extended event by event
    got = ask(20)
    assert (got["sum_n_where"], got["n_where"], got["mean_n"]) == (80, 10, 10.5)
    assert state.prefix is not None and state.prefix.end == 20
    ingest(n=1000, x=1.0, b=True, ts=at(15))
    assert state.prefix.end == 16  # the records from the late one on are summed again
    got = ask(20)
    assert (got["sum_n_where"], got["mean_n"]) == (1080, 1210 / 21)
    ingest(n=7, x=2.0, b=True, ts=at(200))
    got = ask(201)
    assert (got["sum_n_where"], got["n_where"], got["sum_x"]) == (7, 1, 2.0)
    assert got["mean_n"] == (1210 + 7) / 22
    ingest(n=5, x=math.nan, b=True, ts=at(200.5))
    got = ask(201)
    assert math.isnan(got["sum_x"]) and got["sum_n_where"] == 12 and got["n_where"] == 2
    # once the NaN left every window, the sums of x are kept again (not folded for good)
    ingest(n=3, x=4.0, b=False, ts=at(265))  # the NaN stays in the buffer (horizon 175 s)
    got = ask(266)
    assert got["sum_x"] == 4.0 and got["sum_n_where"] is None  # nothing passes: null
    assert state.prefix is not None and True not in state.prefix.broken
    with patch.object(python_state, "BULK_FROM", 0):
        assert_parity(VIEW, frame(log))


def test_distinct_window_by_hand() -> None:
    """s = "a", "b", "a", "c" at 0, 1, 2, 3 s, b True; distinct_s_where counts over 1 min:

    - at 4 s: {a, b, c} -> 3;
    - a late "d" at 1.5 s lands among the counted records: at 4 s, 4;
    - at 61.5 s the window [1.5 s, 61.5 s) holds d, a, c -> 3 (a and b at 0 and 1 s left);
    - at 62.5 s, [2.5 s, 62.5 s): c -> 1;
    - back at 4 s (still answerable: the lateness is 30 s): 4 again (the records re-enter)."""
    prog = ViewProgram(VIEW.ir, bulk_from=0)
    state = prog.new_state()
    log = [row(s=s, b=True, ts=at(i)) for i, s in enumerate("abac")]
    log.append(row(s="d", b=True, ts=at(1.5)))
    events = normalize_events(VIEW, frame(log)).iter_rows(named=True)
    at_ = prog.feature_names.index("distinct_s_where")

    def ask(seconds: float) -> int:
        return prog.query(state, _us(seconds))[at_]  # type: ignore[no-any-return]

    for seq, event in enumerate(events):
        prog.ingest(state, event, seq)
        if seq == 3:
            assert ask(4) == 3
            assert state.windows is not None  # the counted values, kept
    assert [ask(4), ask(61.5), ask(62.5), ask(4)] == [4, 3, 1, 4]
    with patch.object(python_state, "BULK_FROM", 0):
        assert_parity(VIEW, frame(log))


def test_parity_checks_the_replay_against_the_lookup_path() -> None:
    """``featurepipe parity`` answers every 32nd query point again as a lookup answers it (a
    state never queried: windows folded by the bulk code, no running sums), every 512th from
    the state's bytes decoded afresh. A planted error in the bulk fold of sum, which the
    replay's running sums do not use, is caught there and named; so is a decoder that loses
    the newest record."""
    import pytest

    from featurepipe.errors import ParityError
    from featurepipe.ir import aggs
    from featurepipe.parity.harness import BYTES_EVERY, run_parity

    log = [row(x=float(i), n=i, s="a", b=True, ts=at(i)) for i in range(BYTES_EVERY)]
    assert run_parity(VIEW, frame(log)).ok
    bulk_code = aggs.Sum.bulk_code

    def off_by_one(self: Any, agg: Any, acc: str, rec: Any, lo: str, hi: str) -> Any:
        code = bulk_code(self, agg, acc, rec, lo, hi)
        return None if code is None else [*code, f"{acc}[1] += 1"]

    with (
        patch.object(aggs.Sum, "bulk_code", off_by_one),
        pytest.raises(ParityError, match=r"view 'summed', entity 'a'.*as a lookup reads it"),
    ):
        run_parity(VIEW, frame(log))
    loads = ViewProgram.loads

    def losing_the_newest(self: ViewProgram, blob: bytes) -> Any:
        state = loads(self, blob)
        del state.buffer[-1:]
        return state

    with (
        patch.object(ViewProgram, "loads", losing_the_newest),
        pytest.raises(ParityError, match=r"entity 'a'.*\(decoded from its bytes\)"),
    ):
        run_parity(VIEW, frame(log))


def _kept_and_folded(v: fp.FeatureView, rows: list[dict[str, Any]], asked: int, t: int) -> None:
    """Replay ``rows`` into a kept state (queried twice at ``t`` before event ``asked``) and a
    one-by-one fold; both must answer alike at ``t`` after the last event."""
    prog, plain = ViewProgram(v.ir, bulk_from=0), ViewProgram(v.ir, bulk_from=10**9)
    state, shadow = prog.new_state(), plain.new_state()
    for seq, event in enumerate(normalize_events(v, frame(rows)).iter_rows(named=True)):
        if seq == asked:
            prog.query(state, t)
            prog.query(state, t)  # the second query keeps its sums and counts
        prog.ingest(state, event, seq)
        plain.ingest(shadow, event, seq)
    assert [_bits(x) for x in prog.query(state, t)] == [_bits(x) for x in plain.query(shadow, t)]


def test_a_late_event_before_the_running_sums_moves_them() -> None:
    """n = 0..29 at 0..29 s; sums of 10 s kept from queries at 29.5 s (records [20, 30));
    n = 1000 arrives late at 5 s, before them: at 29.5 s the sum is still 20 + ... + 29 = 245
    (not a sum read one record off: 254)."""
    v = view({"s": lambda t: fp.sum(t.n, window="10s")}, lateness="30s", name="late_before")
    rows = [row(n=i, ts=at(i)) for i in range(30)] + [row(n=1000, ts=at(5))]
    _kept_and_folded(v, rows, 30, _us(29.5))
    prog = ViewProgram(v.ir, bulk_from=0)
    state = prog.new_state()
    for seq, event in enumerate(normalize_events(v, frame(rows)).iter_rows(named=True)):
        prog.ingest(state, event, seq)
        prog.query(state, _us(29.5))
    assert prog.query(state, _us(29.5))[0] == 245


def test_a_late_event_of_a_hopped_view_straight_to_the_lifetime_set() -> None:
    """With hops, an event behind the buffer but within the lateness goes straight to the
    lifetime accumulators and the tiles: s = "0".."99" at 0..99 s, then "95" again at 50 s
    (behind the buffer of a 1 min window hopping every 10 s, lateness 5 s): 100 distinct
    values, not 101."""
    v = view(
        {
            "h": lambda t: fp.sum(t.n, window="1m", hop="10s"),
            "cd": lambda t: fp.count_distinct(t.s),
        },
        lateness="5s",
        name="hopped_late",
    )
    rows = [row(n=i, s=str(i), ts=at(i)) for i in range(100)]
    rows.append(row(n=1, s="95", ts=at(50)))
    _kept_and_folded(v, rows, 100, _us(100))
    prog = ViewProgram(v.ir, bulk_from=0)
    state = prog.new_state()
    for seq, event in enumerate(normalize_events(v, frame(rows)).iter_rows(named=True)):
        prog.query(state, _us(100))
        prog.ingest(state, event, seq)
    assert prog.query(state, _us(100))[1] == 100


def test_a_lifetime_first_with_late_events_by_hand() -> None:
    """Once the lifetime accumulators hold an event, the query looks for no first event in
    the buffer: every event they hold is older than every buffered one. n = 1 at 3:05, n = 2
    at 5:30 (n = 1 leaves the buffer), then n = 3 at 3:10, late (to the lifetime
    accumulators, with hops to the tiles too): the first event is n = 1; asked before the
    second event, when the accumulators hold nothing, it comes from the buffer."""
    rows = [row(n=1, ts=at(3 * 3600 + 300)), row(n=2, ts=at(5 * 3600 + 1800))]
    rows.append(row(n=3, ts=at(3 * 3600 + 600)))
    t = _us(5 * 3600 + 1860)
    for hop in ("1h", None):
        v = view(
            {"h": lambda t, hop=hop: fp.count(window="2h", hop=hop), "f": lambda t: fp.first(t.n)},
            lateness="10m",
            name=f"first_{hop}",
        )
        for bulk_from in (0, 10**9):
            prog = ViewProgram(v.ir, bulk_from=bulk_from)
            state = prog.new_state()
            events = normalize_events(v, frame(rows)).iter_rows(named=True)
            for seq, event in enumerate(events):
                prog.ingest(state, event, seq)
                if seq == 0:
                    assert state.compacted[1] is None
                    assert prog.query(state, _us(3 * 3600 + 301))[1] == 1
            assert state.compacted[1] is not None and state.buffer[0][1] == 1
            assert prog.query(state, t)[1] == 1, (hop, bulk_from)
        assert_parity(v, frame(rows))


def test_a_state_queried_by_another_program_is_folded_afresh() -> None:
    """Two views whose records have the same layout: max(x) and min(x) over 1 min. A state
    kept for one, then queried by the other, answers the other's value (the kept counts are
    not read by index across programs): x = 0..39 at 0..39 s -> max 39.0, min 0.0."""
    hi = view({"m": lambda t: fp.max(t.x, window="1m")}, name="hi")
    lo = view({"m": lambda t: fp.min(t.x, window="1m")}, name="lo")
    rows = [row(x=float(i), ts=at(i)) for i in range(40)]
    p_hi, p_lo = ViewProgram(hi.ir, bulk_from=0), ViewProgram(lo.ir, bulk_from=0)
    state = p_hi.new_state()
    for seq, event in enumerate(normalize_events(hi, frame(rows)).iter_rows(named=True)):
        p_hi.ingest(state, event, seq)
    t = _us(40)
    assert p_hi.query(state, t) == p_hi.query(state, t) == (39.0,)
    assert p_lo.query(state, t) == p_lo.query(state, t) == (0.0,)
    assert p_hi.query(state, t) == (39.0,)
