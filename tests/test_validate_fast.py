"""The fast path of ``EventValidator.parse`` against the checked path it stands in for.

``parse`` decodes into a Struct compiled from the contract and hands whatever it cannot prove
equal to ``_parse_checked`` (the pydantic path). Differential tests: for any bytes, both give the
same dict (keys, order, values, Python types, -0.0 kept) or the same ``Invalid`` reason, or the
same other error.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import featurepipe as fp
from featurepipe import load_definitions
from featurepipe.dev.datagen import generate_transactions
from featurepipe.ir.types import DType
from featurepipe.stream.produce import encode_frame
from featurepipe.stream.validate import EventValidator, Invalid
from tests.schema import Ev, scaled

NOW = datetime(2030, 1, 1, tzinfo=UTC)
CLOCK_NS = int(NOW.timestamp()) * 1_000_000_000


class Wide(BaseModel):
    """Every type, nullable or not, with defaults and an alias."""

    ident: int = Field(alias="ID")
    amount: float
    flag: bool
    note: str | None = None
    tag: str = "web"
    count: int | None = 5
    at: datetime
    seen: datetime | None
    since: datetime | None = None


SOURCES = {
    "ev": fp.Source("evs", schema=Ev, timestamp="ts"),
    "wide": fp.Source("wide", schema=Wide, timestamp="at"),
    "tx": load_definitions(Path(__file__).parents[1] / "feature_defs").views["user_spend"].source,
}


def _validator(source: fp.Source) -> EventValidator:
    # the event time may lie a day past 2030-01-01: later datetimes exercise the future check
    return EventValidator(source, future_tolerance=timedelta(days=1), clock=lambda: CLOCK_NS)


VALIDATORS = {name: _validator(s) for name, s in SOURCES.items()}


def _outcome(parse: Any, raw: bytes) -> tuple[Any, ...]:
    try:
        event = parse(raw)
    except Invalid as e:
        return ("invalid", e.reason)
    except Exception as e:  # the checked path's own errors (e.g. OverflowError) must match too
        return ("error", type(e).__name__, str(e))
    # repr tells -0.0 from 0.0 and 1 from 1.0; the list keeps the key order
    return ("event", [(k, type(v).__name__, repr(v)) for k, v in event.items()])


def _same(v: EventValidator, raw: bytes) -> tuple[Any, ...]:
    fast, checked = _outcome(v.parse, raw), _outcome(v._parse_checked, raw)
    assert fast == checked, raw
    return fast


def _often(common: str, *rare: str, weight: int = 10) -> st.SearchStrategy[str]:
    """``common`` about ``weight`` times as often as each of ``rare`` (and shrinking to it)."""
    return st.sampled_from([common] * weight + list(rare))


# -- generated messages ---------------------------------------------------------------------------
DIGITS = st.integers(0, 9).map(str)
YEARS = st.sampled_from(
    ["1969", "1970", "2026", "2029", "2030", "2099", "2100", "0000", "0001", "9999"]
)
DAYS = st.sampled_from(
    ["01-01", "02-28", "02-29", "03-01", "12-31", "13-01", "00-10", "01-00", "04-31"]
)
SEPS = _often("T", "t", " ", "_", "x", "", "TT", weight=3)
TIMES = st.sampled_from(
    ["00:00:00", "23:59:59", "12:34:56", "23:59:60", "24:00:00", "12:30", "12", "1:02:03", "99:99:99"]
)  # fmt: skip
FRACTIONS = st.one_of(
    st.sampled_from(["", ".", ",", ".000000", ".999999", ".9999995", ".123456789"]),
    st.tuples(st.sampled_from([".", ","]), st.lists(DIGITS, min_size=1, max_size=14)).map(
        lambda p: p[0] + "".join(p[1])
    ),
)
ZONES = st.sampled_from(
    ["", "Z", "z", "+00:00", "-00:00", "+0000", "+05:30", "-0530", "+05", "-23:59", "+23:59",
     "+24:00", "+05:60", "-00:59", "+05:99", "UTC", " Z", "Z ", "+00:00:00", "+1:00"]
)  # fmt: skip


@st.composite
def datetime_text(draw: st.DrawFn) -> str:
    shape = draw(_often("instant", "parts", "digits", "date", "number", "text", "odd", weight=6))
    if shape == "instant":  # a real instant (some out of range) in any separator, fraction, zone
        at = draw(st.datetimes(datetime(1960, 1, 1), datetime(2110, 1, 1)))
        return (
            at.strftime("%Y-%m-%d")
            + draw(SEPS)
            + at.strftime("%H:%M:%S")
            + draw(FRACTIONS)
            + draw(ZONES)
        )
    if shape == "date":  # a date alone, or with something after it
        return draw(YEARS) + "-" + draw(DAYS) + draw(st.sampled_from(["", "Z", "T", " "]))
    if shape == "number":  # number text, which neither path takes for a datetime
        return draw(st.sampled_from(["1772323200", " 1e3 ", "2024", "-1.5", "1772323200.5", ".5"]))
    if shape == "text":
        return draw(st.text(max_size=12))
    if shape == "odd":  # non-ASCII digits and stray characters in a good shape
        return draw(
            st.sampled_from(
                ["２０２６-03-01T00:00:00Z", "2026-03-01T00:00:0\u0664Z", " 2026-03-01"]
            )
        )
    text = draw(YEARS) + "-" + draw(DAYS) + draw(SEPS) + draw(TIMES) + draw(FRACTIONS) + draw(ZONES)
    if shape == "digits":  # any digits in the digit places
        text = "".join(draw(DIGITS) if c.isdigit() and draw(st.booleans()) else c for c in text)
    return text


def _dumps(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


STRINGS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", "a,b", ",,,", 'q"uote', "ü\u2028", "\x00", "é,", "😀", " Web"]),
)
# string tokens with escaped commas (\u002c), which no comma byte shows, and other escapes
ESCAPED = st.sampled_from(
    ['"\\u002c"', '"a\\u002Cb"', '"\\u002c,"', '"\\u00e9,"', '"\\u002c\\u002c"', '"\\ud83d\\ude00"']
)
# raw JSON tokens for a value of any field: right and wrong types, edge numbers, bad JSON
TOKENS = [
    "null", "true", "false", "0", "-0", "1", "1.0", "-0.0", "1e3", "1E2", "1.5", "1e400", "-1e400",
    "1e-400", "NaN", "Infinity", "-Infinity", "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "-9223372036854775809", "18446744073709551616",
    "9223372036854775808.0", "1" + "0" * 400, "[]", "{}", "[1, 2]", '{"a": 1}', '"\\u002c"',
    '"a\\u002Cb"', '"\\ud800"', '"\\u00e9,"', "01", ".5", '"1"', '"NaN"', '"true"', "tru",
]  # fmt: skip
ANY_TOKEN = st.one_of(
    st.sampled_from(TOKENS),
    st.integers().map(str),
    st.integers(2**1023, 2**1024).map(str),  # around float64's largest integer
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: f"{x:.17e}"),
    st.tuples(STRINGS, st.booleans()).map(lambda p: _dumps(*p)),
    st.tuples(datetime_text(), st.booleans()).map(lambda p: _dumps(*p)),
)
INSTANTS = st.datetimes(datetime(1970, 1, 2), datetime(2099, 12, 30))
FAST_DATETIME = st.one_of(
    INSTANTS.map(lambda d: d.isoformat() + "Z"),
    INSTANTS.map(lambda d: d.isoformat(sep=" ") + "+05:30"),
    INSTANTS.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123-01:00"),  # nanoseconds
)
LAX_DATETIME = st.one_of(  # valid text that the fast path leaves to the checked path
    INSTANTS.map(lambda d: d.isoformat() + "z"),
    INSTANTS.map(lambda d: d.strftime("%Y-%m-%d_%H:%M")),
    INSTANTS.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0123456z"),
)


def _mostly(
    common: st.SearchStrategy[str], *rare: st.SearchStrategy[str], weight: int = 8
) -> st.SearchStrategy[str]:
    """Draws from ``common`` about ``weight`` times as often as from each of ``rare``."""
    return st.sampled_from([common] * weight + list(rare)).flatmap(lambda s: s)


def good_token(dtype: DType, nullable: bool) -> st.SearchStrategy[str]:
    """A token of the field's type (mostly valid values)."""
    values: st.SearchStrategy[str] = {
        DType.INT: _mostly(
            st.integers(-(2**63), 2**63 - 1).map(str),
            st.integers(-(2**53), 2**53).map(lambda i: f"{i}.0"),  # the checked path's to convert
            st.integers(0, 15).map(lambda e: f"1e{e}"),
        ),
        DType.FLOAT: _mostly(
            st.floats(allow_nan=False, allow_infinity=False).map(repr), st.integers().map(str)
        ),
        DType.BOOL: st.sampled_from(["true", "false"]),
        DType.STR: _mostly(st.tuples(STRINGS, st.booleans()).map(lambda p: _dumps(*p)), ESCAPED),
        DType.DATETIME: _mostly(FAST_DATETIME, LAX_DATETIME, datetime_text(), weight=3).map(
            json.dumps
        ),
    }[dtype]
    return st.one_of(values, st.just("null")) if nullable else values


@st.composite
def message(draw: st.DrawFn, source: fp.Source, keys: dict[str, str]) -> bytes:
    members: list[tuple[str, str]] = []
    for name, (dtype, nullable) in source.fields.items():
        match draw(_often("good", "missing", "wrong", weight=40)):
            case "missing":
                continue
            case "wrong":
                token = draw(ANY_TOKEN)
            case _:
                token = draw(good_token(dtype, nullable))
        members.append((json.dumps(keys[name]), token))
    match draw(_often("", "duplicate", "unknown", "escaped key")):
        case "duplicate":  # a key given twice, mostly with a value of its type
            name = draw(st.sampled_from(list(source.fields)))
            token = draw(_mostly(good_token(*source.fields[name]), ANY_TOKEN, weight=3))
            members.insert(draw(st.integers(0, len(members))), (json.dumps(keys[name]), token))
        case "unknown":
            members.append((json.dumps(draw(st.sampled_from(["zz", "id", "Ident", ""]))), "1"))
        case "escaped key" if members:  # the first letter of a key as an escape
            key, token = members[0]
            members[0] = ('"\\u00' + f"{ord(key[1]):02x}" + key[2:], token)
    if draw(st.booleans()):
        members = draw(st.permutations(members))
    sep = draw(st.sampled_from([",", ", ", " ,\n"]))
    text = "{" + sep.join(f"{k}: {v}" for k, v in members) + "}"
    match draw(_often("", "truncated", "prefixed", "not UTF-8", weight=20)):
        case "truncated":
            text = text[: draw(st.integers(0, len(text)))]
        case "prefixed":
            text = draw(st.sampled_from(["[", "1", '"x"', " ", "{} {}"])) + text
        case "not UTF-8":
            return text.encode() + b"\xff"
    return text.encode()


@pytest.mark.parametrize("name", list(SOURCES))
def test_the_sources_under_test_take_the_fast_path(name: str) -> None:
    assert VALIDATORS[name]._wire is not None


@pytest.mark.parametrize("name", list(SOURCES))
@settings(max_examples=scaled(1500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_and_checked_paths_agree(name: str, data: st.DataObject) -> None:
    v = VALIDATORS[name]
    _same(v, data.draw(message(v.source, v.keys)))


# -- chosen messages ------------------------------------------------------------------------------
def _ev(**replace: str) -> bytes:
    good = {
        "k": '"a"',
        "x": "1.5",
        "n": "7",
        "s": '"text"',
        "b": "true",
        "ts": '"2026-03-01T00:00:00Z"',
    }
    return ("{" + ", ".join(f'"{k}": {replace.get(k, v)}' for k, v in good.items()) + "}").encode()


# datetime text the fast path reads itself (no fallback), with the instant pydantic gives
FAST_DATETIMES = [
    ("2026-03-01T00:00:00Z", datetime(2026, 3, 1, tzinfo=UTC)),
    ("2026-03-01t00:00:00Z", datetime(2026, 3, 1, tzinfo=UTC)),
    ("2026-03-01 00:00:00", datetime(2026, 3, 1, tzinfo=UTC)),  # naive: UTC
    ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),  # a date alone: midnight
    ("2026-03-01T01:30:00+01:30", datetime(2026, 3, 1, tzinfo=UTC)),
    ("2026-03-01T05:30:00+0530", datetime(2026, 3, 1, tzinfo=UTC)),
    ("2026-02-28T23:00:00-01:00", datetime(2026, 3, 1, tzinfo=UTC)),
    ("2026-03-01T00:00:00-00:00", datetime(2026, 3, 1, tzinfo=UTC)),
    ("2026-03-01T00:00:00.5Z", datetime(2026, 3, 1, 0, 0, 0, 500000, tzinfo=UTC)),
    ("2026-03-01T00:00:00,5Z", datetime(2026, 3, 1, 0, 0, 0, 500000, tzinfo=UTC)),
    # beyond microseconds: truncated, not rounded
    ("2026-03-01T00:00:00.1234567Z", datetime(2026, 3, 1, 0, 0, 0, 123456, tzinfo=UTC)),
    ("2026-03-01T00:00:00.999999999Z", datetime(2026, 3, 1, 0, 0, 0, 999999, tzinfo=UTC)),
]
# text the fast path hands to the checked path (which reads or refuses it)
SLOW_DATETIMES = [
    "2026-03-01T00:00:00z",  # lowercase z: fromisoformat refuses it
    "2026-03-01_00:00:00",
    "2026-03-01T00:00",
    "2026-03-01T00:00:00.1234567891Z",  # more than 9 fraction digits
    "2026-03-01T00:00:00+05:60",  # fromisoformat would read 6h
    "2026-03-01T00:00:00+24:00",
    "2026-12-31T23:59:60Z",  # leap second: both refuse
    "2026-03-01T24:00:00Z",
    "2026-02-29T00:00:00Z",
    "1969-12-31T23:59:59.999999Z",  # out of range
    "2100-01-01T00:00:00Z",
    "9999-12-31T23:59:59-23:59",  # the checked path's OverflowError, kept as it is
    "1772323200",
    "2024",
]


def _spy(v: EventValidator) -> list[bytes]:
    """The messages ``v.parse`` hands to the checked path from now on."""
    slow: list[bytes] = []
    checked = v._parse_checked

    def spy(raw: bytes | None) -> dict[str, Any]:
        slow.append(raw or b"")
        return checked(raw)

    v._parse_checked = spy  # type: ignore[method-assign]
    return slow


@pytest.mark.parametrize(("text", "expected"), FAST_DATETIMES)
def test_datetime_text_read_by_the_fast_path(text: str, expected: datetime) -> None:
    v = _validator(SOURCES["ev"])
    raw = _ev(ts=json.dumps(text))
    fast = _same(v, raw)
    slow = _spy(v)
    event = v.parse(raw)
    assert slow == [] and fast[0] == "event"
    assert event["ts"] == (expected - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.mark.parametrize("text", SLOW_DATETIMES)
def test_datetime_text_left_to_the_checked_path(text: str) -> None:
    v = _validator(SOURCES["ev"])
    raw = _ev(ts=json.dumps(text))
    _same(v, raw)
    slow = _spy(v)
    _outcome(v.parse, raw)
    assert slow == [raw]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_ev(n="1.0"), ("event", 1)),  # the checked path converts an integral float
        (_ev(n="1e3"), ("event", 1000)),
        (_ev(n="9223372036854775808"), ("invalid", "n: does not fit in int64")),
        (_ev(x="1e400"), ("invalid", "x: not a finite number (NaN, Infinity and numbers beyond float64 are refused)")),
        (_ev(k="null"), ("invalid", "k: null in a required field")),
        (_ev(ts='"2031-01-01T00:00:00Z"'), ("invalid", "ts: more than 1d in the future")),
        (_ev(ts='"2150-01-01T00:00:00Z"'), ("invalid", "ts: outside the accepted range [1970, 2100)")),
        (_ev()[:-1] + b', "n": 8}', ("invalid", "n: duplicate key")),
        (_ev(k='"a,"')[:-1] + b', "n": 8}', ("invalid", "n: duplicate key")),
        (_ev(k='"\\u002c,"')[:-1] + b', "n": 8}', ("invalid", "n: duplicate key")),
        (_ev(k='"a,b"', s='"\\u002c"'), ("event", 7)),
    ],
)  # fmt: skip
def test_chosen_messages(raw: bytes, expected: tuple[str, Any]) -> None:
    v = _validator(SOURCES["ev"])
    outcome = _same(v, raw)
    if expected[0] == "event":
        assert v.parse(raw)["n"] == expected[1]
    else:
        assert outcome == expected


def test_the_fast_path_alone_reads_the_generated_transactions() -> None:
    v = _validator(SOURCES["tx"])
    v.clock = lambda: 2**62  # no event is in the future
    frame = generate_transactions(2_000, users=50, seed=1)
    messages = [value for _key, value in encode_frame(frame, "user_id")]
    want = [v._parse_checked(m) for m in messages]
    slow = _spy(v)
    assert [v.parse(m) for m in messages] == want
    assert slow == []


def test_defaults_and_alias_on_the_fast_path() -> None:
    v = _validator(SOURCES["wide"])
    raw = b'{"ID": 3, "amount": 1, "flag": true, "at": "2026-03-01T00:00:00Z", "seen": null}'
    _same(v, raw)
    slow = _spy(v)
    event = v.parse(raw)
    assert slow == []
    assert event == {
        "ident": 3,
        "amount": 1.0,
        "flag": True,
        "note": None,
        "tag": "web",
        "count": 5,
        "at": 1772323200000000,
        "seen": None,
        "since": None,
    }
    assert type(event["amount"]) is float
    assert _outcome(v.parse, raw.replace(b'"ID"', b'"ident"'))[0] == "invalid"  # alias only


# -- schemas the fast path does not take -----------------------------------------------------------
class Positive(BaseModel):
    n: int = Field(gt=0)
    ts: datetime


class Doubled(BaseModel):
    n: int
    ts: datetime

    @field_validator("n")
    @classmethod
    def double(cls, n: int) -> int:
        return n * 2


class NoSeven(BaseModel):
    n: int
    ts: datetime

    @model_validator(mode="after")
    def no_seven(self) -> NoSeven:
        if self.n == 7:
            raise ValueError("seven")
        return self


class ByName(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    n: int = Field(alias="N")
    ts: datetime


class Stripped(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)
    s: str
    ts: datetime


class Factory(BaseModel):
    n: int = Field(default_factory=lambda: 1)
    ts: datetime


class Inherited(Doubled):
    m: int = 0


class PostInit(BaseModel):
    n: int
    ts: datetime

    def model_post_init(self, context: Any, /) -> None:
        self.n += 1


class CustomInit(BaseModel):
    n: int
    ts: datetime

    def __init__(self, **data: Any) -> None:
        super().__init__(**(data | {"n": data["n"] + 1}))


def _checked_only(schema: type[BaseModel]) -> EventValidator:
    v = _validator(fp.Source("s", schema=schema, timestamp="ts"))
    assert v._wire is None
    return v


TS = '"ts": "2026-03-01T00:00:00Z"'


def test_a_constraint_keeps_the_checked_path() -> None:
    v = _checked_only(Positive)
    assert _outcome(v.parse, b'{"n": 0, ' + TS.encode() + b"}") == (
        "invalid",
        "n: Input should be greater than 0",
    )
    assert v.parse(b'{"n": 1, ' + TS.encode() + b"}")["n"] == 1


def test_a_field_validator_keeps_the_checked_path() -> None:
    for schema in (Doubled, Inherited):
        v = _checked_only(schema)
        assert v.parse(b'{"n": 4, ' + TS.encode() + b"}")["n"] == 8


def test_a_model_validator_keeps_the_checked_path() -> None:
    v = _checked_only(NoSeven)
    assert _outcome(v.parse, b'{"n": 7, ' + TS.encode() + b"}") == (
        "invalid",
        "event: Value error, seven",
    )


@pytest.mark.parametrize(
    ("schema", "raw", "field", "value"),
    [
        (ByName, b'{"n": 4, ' + TS.encode() + b"}", "n", 4),  # read by name too
        (Stripped, b'{"s": " a ", ' + TS.encode() + b"}", "s", "a"),
        (Factory, b"{" + TS.encode() + b"}", "n", 1),
        (PostInit, b'{"n": 4, ' + TS.encode() + b"}", "n", 5),
        (CustomInit, b'{"n": 4, ' + TS.encode() + b"}", "n", 5),
    ],
)
def test_config_and_defaults_that_change_parsing_keep_the_checked_path(
    schema: type[BaseModel], raw: bytes, field: str, value: Any
) -> None:
    assert _checked_only(schema).parse(raw)[field] == value


def test_datetimes_whose_offset_leaves_the_calendar_are_out_of_range() -> None:
    """Year 9999 at -23:59 is past datetime's own range in UTC: the accepted-range reason,
    not an OverflowError (both paths)."""
    source = load_definitions(Path(__file__).resolve().parents[1] / "feature_defs").views[
        "user_spend"
    ].source
    v = EventValidator(source)
    for text in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"):
        raw = (
            b'{"transaction_id":"t","user_id":"u","merchant_id":"m","amount":1.0,"country":null,'
            b'"employment_type":null,"channel":null,"event_time":"' + text.encode() + b'"}'
        )
        with pytest.raises(Invalid, match="event_time"):
            v.parse(raw)
