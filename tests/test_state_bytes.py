"""Per-entity state survives bytes: round trips keep every answer, including huge exact sums."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile.python_state import ViewProgram
from featurepipe.parity.harness import normalize_events
from tests.schema import at, frame, scaled, view

VALUES = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([5000.0, 1e15, -4.4e15, 2.0**51])
)


@settings(max_examples=scaled(60))
@given(xs=st.lists(st.tuples(VALUES, st.integers(0, 50)), min_size=1, max_size=25), cut=st.integers(0, 25))
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
        st.tuples(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "é"]), st.integers(0, 3)), st.integers(0, 60)),
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
