"""The query's range-coded kinds (``AggKind.range_code``: first, last and count() fold a
window's events at once, from the ends of the ts-sorted buffer) against a naive reference
written here: every retained record tested one by one against the window, the ``where`` and
the (ts, arrival seq) order. The buffers are drawn with ties whose seqs are in any order along
the buffer (a state's bytes do not promise more than ts order), nulls, masks that admit none
or some events, and query times before, inside and after them."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile.python_state import NO_TS, ViewProgram
from tests.schema import view
from tests.test_oracle_duckdb import US

# name -> (kind, window in seconds or None: lifetime, mask bit condition or None: every event)
FEATURES: dict[str, tuple[str, int | None, bool]] = {
    "first_all": ("first", None, False),
    "last_all": ("last", None, False),
    "first_5s": ("first", 5, False),
    "last_5s": ("last", 5, False),
    "first_b": ("first", None, True),
    "last_b": ("last", 5, True),
    "count_5s": ("count", 5, False),
    "count_all": ("count", None, False),
}


def _expr(kind: str, window: int | None, where: bool) -> Any:
    def make(t: Any) -> Any:
        kw: dict[str, Any] = {"window": None if window is None else f"{window}s"}
        if where:
            kw["where"] = t.b
        return fp.count(**kw) if kind == "count" else getattr(fp, kind)(t.s, **kw)

    return make


VIEW = view({name: _expr(*spec) for name, spec in FEATURES.items()}, lateness="1d")
PROG = ViewProgram(VIEW.ir)


Event = tuple[int, int, bool, Any]  # ts (micros), arrival seq, b, s


def reference(events: list[Event], t: int, name: str) -> Any:
    """The feature at ``t`` from the raw events, one by one: no order assumed."""
    kind, window, where = FEATURES[name]
    start = NO_TS if window is None else t - window * US
    seen = [e for e in events if start <= e[0] < t and (not where or e[2])]
    if kind == "count":
        return len(seen)
    if not seen:
        return None
    key = lambda e: (e[0], e[1])  # noqa: E731
    return (min(seen, key=key) if kind == "first" else max(seen, key=key))[3]


def state_of(events: list[Event]) -> Any:
    """A state whose buffer holds the events' records (the row function's) in the given
    order, as a decoded state may."""
    state = PROG.new_state()
    state.buffer = [PROG.record({"ts": ts, "b": b, "s": s}, seq) for ts, seq, b, s in events]
    state.max_ts = max((e[0] for e in events), default=NO_TS)
    return state


@st.composite
def buffers(draw: st.DrawFn) -> list[Event]:
    """Events sorted by ts, ties in any seq order; distinct seqs (arrival ranks)."""
    n = draw(st.integers(0, 14))
    times = sorted(draw(st.lists(st.integers(0, 8), min_size=n, max_size=n)))
    seqs = draw(st.permutations(list(range(n))))
    return [
        (ts * US, seq, draw(st.booleans()), draw(st.one_of(st.none(), st.text("ab", max_size=2))))
        for ts, seq in zip(times, seqs, strict=True)
    ]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(buf=buffers(), at=st.integers(-1, 16))
def test_range_coded_kinds_equal_a_record_by_record_reference(buf: list[Event], at: int) -> None:
    assert [a.name for a in VIEW.ir.features] == list(FEATURES)
    # every kind here is range-coded: no event-by-event loop is left in the query
    assert "for rec in" not in PROG.query_source
    state = state_of(buf)
    t = at * US + (at % 3) * 250_000  # on, between and past the events' seconds
    got = dict(zip(PROG.feature_names, PROG.query(state, t), strict=True))
    want = {name: reference(buf, t, name) for name in FEATURES}
    assert got == want


def test_a_tie_is_broken_by_seq_not_by_buffer_position() -> None:
    """Worked by hand: three events at 2s, the buffer holding seqs 5, 1, 9 in that order.
    first = the smallest (ts, seq) = seq 1's value; last = the largest = seq 9's; with
    ``where`` (b) admitting seqs 5 and 1 only, last_b = seq 5's."""
    state = state_of([(2 * US, 5, True, "p"), (2 * US, 1, True, "q"), (2 * US, 9, False, "r")])
    got = dict(zip(PROG.feature_names, PROG.query(state, 3 * US), strict=True))
    assert got == {
        "first_all": "q",
        "last_all": "r",
        "first_5s": "q",
        "last_5s": "r",
        "first_b": "q",
        "last_b": "p",
        "count_5s": 3,
        "count_all": 3,
    }
