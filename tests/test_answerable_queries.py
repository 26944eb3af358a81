"""Every query a state can answer (T >= max_ts - lateness) gives what a naive reference computes
from the raw events (written here, sharing no code with the state), after every ingest and
after a round trip through bytes, on logs out of order, with ties, events within and beyond the
lateness and behind the horizon, lifetime aggregations beside windows, and hopped windows."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile.python_state import REC_TS, ViewProgram
from tests.schema import scaled, view
from tests.test_oracle_duckdb import US

LATENESS_S = 3
VIEW = view(
    {
        "n": lambda t: fp.count(),
        "mx": lambda t: fp.max(t.x),
        "first_s": lambda t: fp.first(t.s),
        "last_s": lambda t: fp.last(t.s),
        "distinct_s": lambda t: fp.count_distinct(t.s),
        "n_b": lambda t: fp.count(where=t.b),
        "n_5s": lambda t: fp.count(window="5s"),
    },
    lateness=f"{LATENESS_S}s",
)
HOPPED = view(
    {
        "n": lambda t: fp.count(),
        "last_s": lambda t: fp.last(t.s),
        "n_4s_hop": lambda t: fp.count(window="4s", hop="2s"),
    },
    lateness=f"{LATENESS_S}s",
)

Event = tuple[int, int, float | None, str | None, bool | None]  # ts, seq, x, s, b


def reference(name: str, events: list[Event], t: int) -> Any:
    """The feature at ``t`` over the events with ts < t (docs/semantics.md), one by one."""
    seen = [e for e in events if e[0] < t]
    if name == "n":
        return len(seen)
    if name == "n_b":
        return sum(1 for e in seen if e[4] is True)
    if name in ("n_5s", "n_4s_hop"):
        start = t - 5 * US if name == "n_5s" else t // (2 * US) * (2 * US) - 4 * US
        return sum(1 for e in seen if e[0] >= start)
    if name == "mx":
        xs = [e[2] for e in seen if e[2] is not None]
        return max(xs) if xs else None
    if name == "distinct_s":
        return len({e[3] for e in seen if e[3] is not None})
    if not seen:
        return None
    pick = min if name == "first_s" else max
    return pick(seen, key=lambda e: (e[0], e[1]))[3]


@st.composite
def logs(draw: st.DrawFn) -> list[Event]:
    """Arrival order: times mostly rising, some late (within and beyond the lateness, some
    behind the 5 s window's horizon), ties."""
    n = draw(st.integers(1, 30))
    events = []
    clock = 0
    for seq in range(n):
        step = draw(st.sampled_from([0, 0, 1, 1, 2, 3, 5, -1, -2, -4, -9]))
        clock = max(0, clock + step) if step >= 0 else clock
        ts = max(0, clock + step) if step < 0 else clock
        half = draw(st.sampled_from([0, 0, 500_000]))
        x = draw(st.one_of(st.none(), st.sampled_from([-1.5, 0.0, 2.0, 7.25])))
        s = draw(st.one_of(st.none(), st.sampled_from(["a", "b", "é", "c"])))
        b = draw(st.one_of(st.none(), st.booleans()))
        events.append((ts * US + half, seq, x, s, b))
    return events


def _check(v: fp.FeatureView, events: list[Event]) -> None:
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    lateness = LATENESS_S * US
    for i, (ts, seq, x, s, b) in enumerate(events):
        prog.ingest(state, {"k": "a", "ts": ts, "x": x, "n": None, "s": s, "b": b}, seq)
        line = state.max_ts - lateness  # the earliest time the state answers
        times = [rec[REC_TS] for rec in state.buffer]
        assert times == sorted(times)
        seen = events[: i + 1]
        # answerable: at the line, between, at the newest event and past it
        for t in (line, line + 250_000, state.max_ts, state.max_ts + 1, state.max_ts + 6 * US):
            for j, state_ in enumerate((state, prog.loads(prog.dumps(state)))):
                got = dict(zip(prog.feature_names, prog.query(state_, t), strict=True))
                want = {name: reference(name, seen, t) for name in prog.feature_names}
                assert got == want, (i, t, j)


@settings(max_examples=scaled(300), deadline=None)
@given(events=logs())
def test_every_answerable_query_equals_the_raw_events(events: list[Event]) -> None:
    _check(VIEW, events)


@settings(max_examples=scaled(150), deadline=None)
@given(events=logs())
def test_with_hopped_windows_beside(events: list[Event]) -> None:
    _check(HOPPED, events)
