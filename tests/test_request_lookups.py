"""Online lookups of views with request fields (``fp.request``), on a real Redis-protocol server.

The lookup takes the request's values, one per request row, checked against the declared
types, and answers such views per request row. Expected values come from the batch compiler
(``BatchProgram.features`` with the request values as columns of the query frame, a different
code path) and from values worked out by hand.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from featurepipe import load_definitions
from featurepipe.batch.sources import read_events
from featurepipe.compile.polars_aggs import TS, BatchProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.errors import DataError, StateError
from featurepipe.ir.timebase import to_epoch_us
from featurepipe.online.lookup import OnlineReader
from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect
from featurepipe.store import FeatureStore

pytest_plugins = ["redis_server"]  # fixture redis_url

T0 = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = T0 + timedelta(hours=1)  # materialized up to here; every event is before it
AT = "2026-03-01T01:00:00Z"  # lookups are made at UNTIL
AT_US = to_epoch_us(UNTIL)

DEFS = """
from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Tx(BaseModel):
    user_id: str
    amount: float | None
    country: str | None
    ts: datetime


tx = fp.Source("req_tx", schema=Tx, timestamp="ts", batch=fp.ParquetSource("data/tx/"))
user = fp.Entity("user", key="user_id")


@fp.feature_view(entity=user, source=tx, lateness="1h")
def req_risk(t):
    return {
        "ratio": fp.request("amount", float) / fp.mean(t.amount, window="7d"),
        "same_country": fp.request("country", str) == fp.last(t.country),
        "seen_after_last": fp.request("seen_at", datetime) > fp.max(t.ts),
        "double_amount": fp.request("amount", float) * 2,
        "n": fp.count(window="1h"),
        "over_limit": fp.count() > fp.request("limit", int),
        "vip_or_busy": fp.request("vip", bool) | (fp.count() > 1),
    }


@fp.feature_view(entity=user, source=tx, lateness="1h")
def req_plain(t):
    return {"total": fp.sum(t.amount, default=0.0), "cnt": fp.count()}


@fp.feature_view(entity=user, source=tx, lateness="1h")
def req_clock(t):
    return {"since_s": fp.since_last(t.ts), "n_events": fp.count()}
"""

# u1: mean 20.0, last country FR, newest event T0+30m, 2 events in the last hour
# u2: one event, null country; u3: no event at all (absent)
TX = {
    "user_id": ["u1", "u2", "u1"],
    "amount": [10.0, 4.0, 30.0],
    "country": ["US", None, "FR"],
    "ts": [T0 + timedelta(minutes=20), T0 + timedelta(minutes=25), T0 + timedelta(minutes=30)],
}
LAST_U1 = T0 + timedelta(minutes=30)
FIELDS = {
    "amount": pl.Float64,
    "country": pl.String,
    "seen_at": pl.Datetime("us", "UTC"),
    "limit": pl.Int64,
    "vip": pl.Boolean,
}
RISK = "req_risk"
RISK_FEATURES = [
    "ratio",
    "same_country",
    "seen_after_last",
    "double_amount",
    "n",
    "over_limit",
    "vip_or_busy",
]


@dataclass
class Repo:
    root: Path
    redis_url: str
    prefix: str
    views: dict[str, FeatureView]

    def reader(self, **kwargs: Any) -> OnlineReader:
        return OnlineReader(
            connect(self.redis_url), list(self.views.values()), self.prefix, **kwargs
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COLUMNS": "250"}
        return subprocess.run(
            [sys.executable, "-m", "featurepipe.cli", *args, "--repo", str(self.root),
             "--redis-url", self.redis_url, "--prefix", self.prefix],
            cwd=self.root, capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip


@pytest.fixture(scope="module")
def repo(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    root = tmp_path_factory.mktemp("request-lookups")
    (root / "feature_defs").mkdir()
    (root / "feature_defs" / "request_risk.py").write_text(DEFS)
    (root / "data" / "tx").mkdir(parents=True)
    pl.DataFrame(
        TX,
        schema={
            "user_id": pl.String,
            "amount": pl.Float64,
            "country": pl.String,
            "ts": pl.Datetime("us", "UTC"),
        },
    ).write_parquet(root / "data" / "tx" / "part-0.parquet")
    defs = load_definitions(root / "feature_defs")
    views = {name: defs.view(name) for name in (RISK, "req_plain", "req_clock")}
    prefix = f"fptest-request-{uuid.uuid4().hex[:12]}"
    client = connect(redis_url)
    for view in views.values():
        materialize(view, UNTIL, client, root=root, prefix=prefix)
    try:
        yield Repo(root, redis_url, prefix, views)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _batch(repo: Repo, users: list[str], request: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The batch compiler's features of ``req_risk`` at UNTIL, the request values as columns
    of the query frame."""
    view = repo.views[RISK]
    events, _ = read_events(view.source, root=repo.root)
    queries = pl.DataFrame(
        {"user_id": users, TS: [AT_US] * len(users), **request},
        schema={"user_id": pl.String, TS: pl.Int64, **{k: FIELDS[k] for k in request}},
    )
    out = BatchProgram(view.ir).features(events, queries)
    return out.select(RISK_FEATURES).to_dicts()


def _bits(v: Any) -> Any:
    """A value as comparable data: floats by their IEEE bit pattern."""
    if isinstance(v, float):
        return ("float", struct.pack(">d", v))
    return (type(v).__name__, v)


def _canon(rows: list[dict[str, Any]]) -> list[list[tuple[str, Any]]]:
    return [[(k, _bits(v)) for k, v in row.items()] for row in rows]


def _features(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: row[k] for k in RISK_FEATURES} for row in rows]


USERS = ["u1", "u1", "u2", "u3", "u1"]
REQUEST: dict[str, list[Any]] = {
    "amount": [50.0, 5, 2.0, 7.5, None],  # an int for a float field is taken as a float
    "country": ["FR", "US", "FR", "FR", None],
    "seen_at": [
        LAST_U1 + timedelta(seconds=1),
        LAST_U1 - timedelta(seconds=1),
        UNTIL,
        UNTIL,
        None,
    ],
    "limit": [1, 2, 0, 0, None],
    "vip": [False, True, False, True, None],
}


# -- values -------------------------------------------------------------------------------------
def test_request_features_equal_the_batch_compiler(repo: Repo) -> None:
    rows = repo.reader().read(USERS, {RISK: RISK_FEATURES}, at_us=AT_US, request=REQUEST)
    batch_request = {**REQUEST, "amount": [50.0, 5.0, 2.0, 7.5, None]}
    assert _canon(_features(rows)) == _canon(_batch(repo, USERS, batch_request))
    assert [r[f"{RISK}_found"] for r in rows] == [True, True, True, False, True]


def test_request_features_worked_by_hand(repo: Repo) -> None:
    """u1: mean 20.0 over 7 days, last country FR, newest event at T0+30m, 2 events."""
    rows = repo.reader().read(USERS, {RISK: RISK_FEATURES}, at_us=AT_US, request=REQUEST)
    u1_a, u1_b, u2, u3, u1_null = _features(rows)
    assert u1_a == {
        "ratio": 2.5,  # 50 / 20
        "same_country": True,
        "seen_after_last": True,
        "double_amount": 100.0,
        "n": 2,
        "over_limit": True,  # 2 > 1
        "vip_or_busy": True,
    }
    # the same entity and state, other request values: other answers
    assert u1_b == {
        "ratio": 0.25,  # 5 / 20
        "same_country": False,
        "seen_after_last": False,
        "double_amount": 10.0,
        "n": 2,
        "over_limit": False,  # 2 > 2
        "vip_or_busy": True,
    }
    assert u1_a != u1_b
    # u2's only event has no country: the comparison is null
    assert u2["ratio"] == 0.5 and u2["same_country"] is None and u2["seen_after_last"] is True
    assert u2["vip_or_busy"] is False and u2["n"] == 1
    # u3 has no state: the request-only feature is computed, aggregations are their defaults
    assert u3 == {
        "ratio": None,
        "same_country": None,
        "seen_after_last": None,
        "double_amount": 15.0,
        "n": 0,
        "over_limit": False,  # 0 > 0
        "vip_or_busy": True,
    }
    # null request values: null features where they are read, aggregations as ever
    assert u1_null == {
        "ratio": None,
        "same_country": None,
        "seen_after_last": None,
        "double_amount": None,
        "n": 2,
        "over_limit": None,
        "vip_or_busy": True,  # null | true
    }


def test_absent_entity_gets_request_only_features(repo: Repo) -> None:
    rows = repo.reader().read(
        ["nobody"],
        {RISK: RISK_FEATURES},
        at_us=AT_US,
        request={
            "amount": [3.25],
            "country": ["FR"],
            "seen_at": [UNTIL],
            "limit": [0],
            "vip": [True],
        },
    )
    assert rows == [
        {
            "ratio": None,  # no event: the mean is null
            "same_country": None,
            "seen_after_last": None,
            "double_amount": 6.5,  # computed from the request alone
            "n": 0,
            "over_limit": False,  # 0 > 0
            "vip_or_busy": True,
            f"{RISK}_found": False,
        }
    ]


def test_datetime_request_field_in_any_timezone(repo: Repo) -> None:
    """An aware datetime in another timezone is the same instant: at, just before and just
    after u1's newest event."""
    plus_two = timezone(timedelta(hours=2))
    seen = [
        LAST_U1.astimezone(plus_two),
        (LAST_U1 - timedelta(microseconds=1)).astimezone(plus_two),
        (LAST_U1 + timedelta(microseconds=1)).astimezone(plus_two),
    ]
    request = {
        "amount": [1.0] * 3,
        "country": ["FR"] * 3,
        "seen_at": seen,
        "limit": [0] * 3,
        "vip": [False] * 3,
    }
    rows = repo.reader().read(["u1"] * 3, {RISK: ["seen_after_last"]}, at_us=AT_US, request=request)
    assert [r["seen_after_last"] for r in rows] == [False, False, True]
    batch = _batch(repo, ["u1"] * 3, {**request, "seen_at": [s.astimezone(UTC) for s in seen]})
    assert [r["seen_after_last"] for r in batch] == [False, False, True]


# -- the reference path and the cache ------------------------------------------------------------
def _outcome(call: Callable[[], list[dict[str, Any]]]) -> Any:
    try:
        return ("rows", _canon(call()))
    except Exception as e:  # the same refusal, class and message, on both paths
        return ("raised", type(e).__name__, str(e))


LATE = to_epoch_us(T0 - timedelta(hours=1))  # more than the lateness behind u1's newest event


@pytest.mark.parametrize("at_us", [AT_US, AT_US + 86_400_000_000, LATE])
def test_reference_path_equals_read(repo: Repo, at_us: int) -> None:
    """Both views (with and without request fields) in one lookup; at LATE both refuse the
    read alike."""
    reader = repo.reader()
    keys = {"user_id": [*USERS, "u2", "u3"]}
    request = {k: [*v, v[0], v[1]] for k, v in REQUEST.items()}
    wanted = {"req_plain": ["total", "cnt"], RISK: RISK_FEATURES}
    columns = reader.check_keys(keys, wanted)
    per_view = {name: columns["user_id"] for name in wanted}
    n = len(keys["user_id"])
    for _ in range(2):  # the second time with answers in the cache
        fast = _outcome(lambda: reader.read_keyed(keys, wanted, at_us=at_us, request=request))
        slow = _outcome(lambda: reader._read_one_by_one(per_view, n, wanted, at_us, None, request))
        assert fast == slow
    if at_us == LATE:
        assert fast[:2] == ("raised", StateError.__name__), fast
    else:
        assert fast[0] == "rows"


def test_cache_is_never_used_for_request_views(repo: Repo) -> None:
    reader = repo.reader()
    cache = reader.cache
    assert cache is not None
    wanted = {RISK: ["ratio", "n"]}

    def one(amount: float) -> dict[str, Any]:
        request = {"amount": [amount], "country": ["FR"], "seen_at": [UNTIL], "limit": [1],
                   "vip": [False]}  # fmt: skip
        return reader.read(["u1"], wanted, at_us=AT_US, request=request)[0]

    first, second, again = one(50.0), one(10.0), one(50.0)
    assert first["ratio"] == 2.5 and second["ratio"] == 0.5 and again == first
    assert (cache.reused, cache.computed, len(cache)) == (0, 0, 0)
    # the same reader caches the view without request fields as before
    for _ in range(2):
        assert reader.read(["u1"], {"req_plain": ["cnt"]}, at_us=AT_US) == [
            {"cnt": 2, "req_plain_found": True}
        ]
    assert (cache.reused, len(cache)) == (1, 1)
    one(20.0)
    assert (cache.reused, len(cache)) == (1, 1)


def test_a_view_of_the_query_time_is_never_answered_from_the_cache(repo: Repo) -> None:
    """since_last moves with T: two reads a second apart differ by exactly a second (u1's
    newest event is at T0+30m), none is reused, while the plain view is."""
    reader = repo.reader()
    cache = reader.cache
    assert cache is not None
    wanted = {"req_clock": ["since_s", "n_events"]}
    first = reader.read(["u1", "u3"], wanted, at_us=AT_US)
    later = reader.read(["u1", "u3"], wanted, at_us=AT_US + 1_000_000)
    elapsed = (AT_US - int(LAST_U1.timestamp()) * 1_000_000) / 1e6
    assert first == [
        {"since_s": elapsed, "n_events": 2, "req_clock_found": True},
        {"since_s": None, "n_events": 0, "req_clock_found": False},
    ]
    assert later[0]["since_s"] == elapsed + 1.0 and later[1] == first[1]
    assert (cache.reused, cache.computed, len(cache)) == (0, 0, 0)


# -- refusals -----------------------------------------------------------------------------------
def _request(**changes: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {
        "amount": [1.0, 2.0],
        "country": ["FR", "US"],
        "seen_at": [UNTIL, UNTIL],
        "limit": [1, 2],
        "vip": [True, False],
    }
    out.update(changes)
    return out


def test_a_missing_request_field_names_the_view_the_field_and_its_type(repo: Repo) -> None:
    reader = repo.reader()
    request = _request()
    del request["amount"]
    with pytest.raises(
        DataError, match=r"view 'req_risk' reads the request field 'amount' \(float\)"
    ):
        reader.read(["u1", "u2"], {RISK: ["ratio", "n"]}, at_us=AT_US, request=request)
    with pytest.raises(DataError, match=r"'req_risk'.*'amount' \(float\)"):
        reader.read(["u1", "u2"], {RISK: ["double_amount"]}, at_us=AT_US)  # no request at all


def test_features_that_read_no_request_field_need_no_request(repo: Repo) -> None:
    """Only the request fields of the requested features are required: ``n`` reads none, so
    it is looked up without a request (and equals its value in a full request)."""
    reader = repo.reader()
    alone = reader.read(["u1", "u2"], {RISK: ["n"]}, at_us=AT_US)
    full = reader.read(["u1", "u2"], {RISK: ["n", "ratio"]}, at_us=AT_US, request=_request())
    assert [r["n"] for r in alone] == [r["n"] for r in full]
    # a field the view reads, given although the requested features do not read it: ignored
    assert reader.read(["u1", "u2"], {RISK: ["n"]}, at_us=AT_US, request=_request()) == alone


def test_an_unknown_request_field_raises(repo: Repo) -> None:
    reader = repo.reader()
    with pytest.raises(DataError, match=r"unknown request field 'amnt'.*'amount'"):
        reader.read(["u1", "u2"], {RISK: ["n"]}, at_us=AT_US, request=_request(amnt=[1.0, 2.0]))
    # a request field for a lookup of views that read none
    with pytest.raises(DataError, match=r"unknown request field 'amount'.*read no request field"):
        reader.read(["u1"], {"req_plain": ["cnt"]}, at_us=AT_US, request={"amount": [1.0]})


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("limit", True),  # a bool is not an int
        ("limit", 1.0),
        ("limit", "1"),
        ("limit", 2**63),  # beyond int64
        ("amount", True),  # nor a float
        ("amount", "1.5"),
        ("country", 7),
        ("vip", 1),
        ("seen_at", datetime(2026, 3, 1)),  # naive: which instant?
        ("seen_at", AT_US),
        ("seen_at", "2026-03-01T00:00:00Z"),
    ],
)
def test_a_value_of_the_wrong_type_raises(repo: Repo, field: str, bad: Any) -> None:
    request = _request()
    request[field] = [request[field][0], bad]
    with pytest.raises(DataError) as info:
        repo.reader().read(["u1", "u2"], {RISK: ["n"]}, at_us=AT_US, request=request)
    message = str(info.value)
    assert f"'{field}'" in message and "row 1" in message and repr(bad) in message, message


def test_a_column_of_another_length_raises(repo: Repo) -> None:
    with pytest.raises(DataError, match=r"'vip' gives 3 value\(s\) for 2 request row\(s\)"):
        repo.reader().read(
            ["u1", "u2"], {RISK: ["n"]}, at_us=AT_US, request=_request(vip=[True, False, True])
        )


def test_the_reference_path_refuses_alike(repo: Repo) -> None:
    reader = repo.reader()
    wanted = {RISK: ["n", "same_country"]}  # same_country reads "country"
    per_view = {RISK: ["u1", "u2"]}
    for request in (_request(limit=[1, True]), _request(amnt=[1, 2]), {"amount": [1.0, 2.0]}):
        fast = _outcome(partial(reader.read, ["u1", "u2"], wanted, at_us=AT_US, request=request))
        slow = _outcome(partial(reader._read_one_by_one, per_view, 2, wanted, AT_US, None, request))
        assert fast == slow and fast[:2] == ("raised", DataError.__name__), fast


# -- the facade and the command line -------------------------------------------------------------
def test_get_online_features_takes_a_request(repo: Repo) -> None:
    store = FeatureStore(repo.root, redis_url=repo.redis_url, prefix=repo.prefix)
    request = _request(amount=[50.0, 2.0])
    df = store.get_online_features(
        {"user_id": ["u1", "u2"]}, ["req_risk:ratio", "req_plain:cnt"], at=UNTIL, request=request
    )
    assert df.to_dicts() == [
        {"user_id": "u1", "ratio": 2.5, "req_risk_found": True, "cnt": 2, "req_plain_found": True},
        {"user_id": "u2", "ratio": 0.5, "req_risk_found": True, "cnt": 1, "req_plain_found": True},
    ]
    # a DataFrame of request values, and rows as dicts
    frame = pl.DataFrame(request, schema=FIELDS)
    rows = store.get_online_features(
        [{"user_id": "u1"}, {"user_id": "u2"}], ["req_risk:ratio"], at=UNTIL, request=frame,
        as_dicts=True,
    )  # fmt: skip
    assert rows == [
        {"ratio": 2.5, "req_risk_found": True},
        {"ratio": 0.5, "req_risk_found": True},
    ]
    with pytest.raises(DataError, match="request field 'amount'"):
        store.get_online_features({"user_id": ["u1"]}, ["req_risk:ratio"], at=UNTIL)


def test_cli_request_values_are_read_as_their_declared_types(repo: Repo) -> None:
    out = repo.cli(
        "get", "--features", "req_risk:ratio,req_risk:same_country,req_risk:seen_after_last,"
        "req_risk:over_limit,req_risk:vip_or_busy", "--at", AT, "--json",
        "--entity", "user_id=u1", "--entity", "user_id=u1",
        "--request", "amount=50", "--request", "amount=5.5",
        "--request", "country=FR", "--request", "country=US",
        "--request", "seen_at=2026-03-01T02:30:01+02:00",  # 1s after u1's newest event
        "--request", "seen_at=2026-03-01T00:29:59Z",
        "--request", "limit=1", "--request", "limit=2",
        "--request", "vip=false", "--request", "vip=true",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == [
        {"user_id": "u1", "ratio": 2.5, "same_country": True, "seen_after_last": True,
         "over_limit": True, "vip_or_busy": True, "req_risk_found": True},
        {"user_id": "u1", "ratio": 0.275, "same_country": False, "seen_after_last": False,
         "over_limit": False, "vip_or_busy": True, "req_risk_found": True},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("limit=1.5", "'limit' is declared int"),
        ("seen_at=2026-03-01T00:00:00", "has no timezone"),
        ("amnt=3", "unknown request field 'amnt'"),
    ],
)
def test_cli_refuses_a_bad_request_value_in_one_line(
    repo: Repo, option: str, expected: str
) -> None:
    out = repo.cli(
        "get", "--features", "req_risk:ratio", "--at", AT, "--entity", "user_id=u1",
        "--request", "amount=1", "--request", "country=FR",
        "--request", "seen_at=2026-03-01T00:00:00Z", "--request", "vip=true",
        "--request", option,
    )  # fmt: skip
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert expected in lines[0] and f"--request {option}" in lines[0], lines
