"""Per-entity state survives bytes: round trips keep every answer, including huge exact sums."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile.python_state import STATE_LAYOUT, ViewProgram
from featurepipe.parity.harness import normalize_events
from tests.schema import at, frame, scaled, view

VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([5000.0, 1e15, -4.4e15, 2.0**51]),
)


@settings(max_examples=scaled(60))
@given(
    xs=st.lists(st.tuples(VALUES, st.integers(0, 50)), min_size=1, max_size=25),
    cut=st.integers(0, 25),
)
def test_round_trip_mid_stream(xs: list[tuple[Any, int]], cut: int) -> None:
    v = view(
        {
            "s": lambda t: fp.sum(t.x, window="10s"),
            "var": lambda t: fp.var(t.x),
            "sd": lambda t: fp.std(t.x, window="30s"),
            "m": lambda t: fp.mean(t.x),
            "mx": lambda t: fp.max(t.x),
            "d": lambda t: fp.count_distinct(t.x),
            "f": lambda t: fp.first(t.x),
            "n": lambda t: fp.sum(t.n),
            # hopped windows: older events leave the buffer for per-hop tiles
            "hs": lambda t: fp.sum(t.x, window="20s", hop="5s"),
            "hd": lambda t: fp.count_distinct(t.x, window="12s", hop="4s"),
            "hl": lambda t: fp.last(t.x, window="10s", hop="10s"),
            "hmn": lambda t: fp.min(t.x, window="30s", hop="10s"),
            "hv": lambda t: fp.var(t.x, window="30s", hop="5s"),
        },
        lateness="5s",
    )
    rows = [{"k": "a", "x": x, "n": 2**62, "s": None, "b": None, "ts": at(sec)} for x, sec in xs]
    events = list(normalize_events(v, frame(rows)).iter_rows(named=True))
    prog = ViewProgram(v.ir)
    straight, resumed = prog.new_state(), prog.new_state()
    for seq, ev in enumerate(events):
        prog.ingest(straight, ev, seq)
        prog.ingest(resumed, ev, seq)
        if seq == min(cut, len(events) - 1):
            resumed = prog.loads(prog.dumps(resumed))
    assert prog.dumps(resumed) == prog.dumps(straight)
    t = max(ev["ts"] for ev in events) + 1
    assert repr(prog.query(resumed, t)) == repr(prog.query(straight, t))


@settings(max_examples=scaled(60))
@given(
    xs=st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "é"]), st.integers(0, 3)),
            st.integers(0, 60),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_state_bytes_after_every_event_equal_a_fresh_replay(xs: list[tuple[Any, int]]) -> None:
    """The worker encodes one long-lived state after every batch, reusing the wire form of a
    distinct set that did not grow; each encoding equals that of a state replayed from scratch
    (which has nothing to reuse)."""
    v = view(
        {
            "d": lambda t: fp.count_distinct(t.s),  # lifetime: the compacted set grows
            "d5": lambda t: fp.count_distinct(t.s, window="5s"),
            "n": lambda t: fp.count(),
        },
        lateness="2s",
    )
    rows = [
        {"k": "a", "x": None, "n": 1, "s": None if s is None else str(s), "b": None, "ts": at(sec)}
        for s, sec in xs
    ]
    events = list(normalize_events(v, frame(rows)).iter_rows(named=True))
    prog = ViewProgram(v.ir)
    live = prog.new_state()
    for seq, ev in enumerate(events):
        prog.ingest(live, ev, seq)
        fresh = ViewProgram(v.ir).new_state()
        for s2, ev2 in enumerate(events[: seq + 1]):
            prog.ingest(fresh, ev2, s2)
        assert prog.dumps(live) == prog.dumps(fresh)


def test_hopped_windows_keep_state_bounded_by_tiles() -> None:
    """One event a second for 3 hours: a sliding 1h window keeps every event of the last hour
    and the lateness individually; a 1h window hopping every 5m keeps events individually only
    back to the hop boundary at or before newest - lateness (at most hop + lateness = 6 min),
    and older ones as one tile per 5 minutes: 12 tiles for the hour behind that boundary."""
    rows = [
        {"k": "a", "x": float(i % 7), "n": i, "s": str(i % 5), "b": None, "ts": at(i)}
        for i in range(3 * 3600)
    ]
    features = {
        "c": lambda t, w: fp.count(window="1h", **w),
        "s": lambda t, w: fp.sum(t.x, window="1h", **w),
        "d": lambda t, w: fp.count_distinct(t.s, window="1h", **w),
        "l": lambda t, w: fp.last(t.n, window="1h", **w),
    }
    states = {}
    for name, hop in (("sliding", {}), ("hopped", {"hop": "5m"})):
        v = view(
            {f: (lambda t, g=g, hop=hop: g(t, hop)) for f, g in features.items()}, lateness="1m"
        )
        prog = ViewProgram(v.ir)
        state = prog.new_state()
        for seq, ev in enumerate(normalize_events(v, frame(rows)).iter_rows(named=True)):
            prog.ingest(state, ev, seq)
            if name == "hopped" and seq > 3600:
                assert len(state.buffer) <= 360 + 1 and [len(t) for t in state.tiles] <= [12], seq
        t = at(3 * 3600 + 30)
        states[name] = (prog, state, prog.query(state, int(t.timestamp()) * 1_000_000))
    sliding, hopped = states["sliding"][1], states["hopped"][1]
    assert len(sliding.buffer) == 3600 + 60 + 1  # newest - 1h - 1m <= ts: 3661 events
    # newest = 10799 s, lateness 60 s: boundary 10739 // 300 * 300 = 10500 (BASE is a
    # midnight, a multiple of 300 s since the epoch): 300 events from it
    assert len(hopped.buffer) == 10799 - 10500 + 1
    base = int(at(0).timestamp()) // 300  # tile indices count hops since the epoch
    assert sorted(hopped.tiles[0]) == [base + i for i in range(10500 // 300 - 12, 10500 // 300)]
    # the query at 10830 s: the sliding window [7230, 10830) and the hopped one
    # [10800 - 3600 = 7200, 10830): 3570 and 3600 events
    assert states["sliding"][2][0] == 3570 and states["hopped"][2][0] == 3600
    small, large = (len(p.dumps(s)) for p, s, _ in (states["hopped"], states["sliding"]))
    assert small * 5 < large, (small, large)


def test_tile_pruning_does_not_depend_on_the_order_tiles_were_made() -> None:
    """A late event makes an older tile after newer ones (events at 30 s and 36 s, then 27 s:
    tiles 6, then 5, hop 5 s); when the oldest window start passes tile 5, it must go whether
    the state lived on or was read back from bytes (which orders tiles by index), or equal
    event sequences would give different bytes."""
    v = view({"c": lambda t: fp.count(window="10s", hop="5s")}, lateness="1s")
    rows = [
        {"k": "a", "x": 1.0, "n": 1, "s": None, "b": None, "ts": at(sec)}
        for sec in (30, 36, 27, 41)
    ]
    events = list(normalize_events(v, frame(rows)).iter_rows(named=True))
    prog = ViewProgram(v.ir)
    live = prog.new_state()
    for seq, ev in enumerate(events[:3]):
        prog.ingest(live, ev, seq)
    assert sorted(live.tiles[0]) == [int(at(27).timestamp()) // 5, int(at(30).timestamp()) // 5]
    resumed = prog.loads(prog.dumps(live))
    prog.ingest(live, events[3], 3)
    prog.ingest(resumed, events[3], 3)
    assert prog.dumps(live) == prog.dumps(resumed)
    # tile 5 left every window; 36 s left the buffer for tile 7
    assert sorted(live.tiles[0]) == [int(at(30).timestamp()) // 5, int(at(36).timestamp()) // 5]


def test_a_record_keeps_each_distinct_input_once_and_no_constant() -> None:
    """Worked by hand: count() reads the constant True (not kept); sum(x) and mean(x) prepare
    the same fixed-point value (kept once); count(x) keeps x; max(x) keeps x with -0.0 made
    0.0. x = 1.5 at 2 s, arrival 7: (ts, seq, mask of the 5 aggregations, 1.5 * 2**40, 1.5,
    1.5)."""
    v = view(
        {
            "n": lambda t: fp.count(),
            "s": lambda t: fp.sum(t.x),
            "m": lambda t: fp.mean(t.x),
            "c": lambda t: fp.count(t.x),
            "mx": lambda t: fp.max(t.x),
        }
    )
    prog = ViewProgram(v.ir)
    rec = prog.record({"ts": 2_000_000, "x": 1.5}, 7)
    assert rec == (2_000_000, 7, 31, 1_649_267_441_664, 1.5, 1.5)
    assert prog.slots == [None, 3, 3, 4, 5] and prog.constants == {0: "True"}
    state = prog.new_state()
    prog.ingest(state, {"ts": 2_000_000, "x": 1.5}, 7)
    prog.ingest(state, {"ts": 3_000_000, "x": -0.0}, 8)
    assert prog.query(prog.loads(prog.dumps(state)), 4_000_000) == (2, 1.5, 0.75, 2, 1.5)


def test_a_state_of_another_layout_is_refused() -> None:
    """A state written with layout 1 (no layout element: one input per aggregation), or one
    claiming another layout, fails to decode instead of being read with shifted inputs."""
    v = view({"s": lambda t: fp.sum(t.x), "n": lambda t: fp.count()})
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    prog.ingest(state, {"ts": 2_000_000, "x": 1.5}, 1)
    body = msgspec.msgpack.decode(prog.dumps(state))
    assert STATE_LAYOUT == 2 and body[-1] == prog.layout and prog.layout.startswith("2:")
    layout_1 = [*body[:2], [[*r[:3], r[3], True] for r in body[2]], body[3]]
    with pytest.raises(msgspec.ValidationError):
        prog.loads(msgspec.msgpack.encode(layout_1))
    with pytest.raises(ValueError, match=f"state layout 3:x, this version reads {prog.layout}"):
        prog.loads(msgspec.msgpack.encode([*body[:-1], "3:x"]))
    # the same layout number with inputs in other places (a release that shares or splits
    # slots differently): refused too
    other = ViewProgram(view({"n": lambda t: fp.count(), "s": lambda t: fp.sum(t.x)}).ir)
    assert other.slots != prog.slots and other.layout != prog.layout
    with pytest.raises(ValueError, match="state layout"):
        prog.loads(other.dumps(other.new_state()))
