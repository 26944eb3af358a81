"""Composite entity keys (``fp.Entity(..., key=("user_id", "merchant_id"))``) on every path:
the key's text per event and per frame, definition checks, parity, training sets, materialize
and lookups on a real Redis-protocol server (API and command line), and the stream end to end.
Expected values are worked out by hand or come from the other compiler."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe import load_definitions
from featurepipe.errors import DataError, DefinitionError
from featurepipe.ir.entity_keys import compose, compose_expr, compose_values
from featurepipe.ir.timebase import to_epoch_us
from featurepipe.online.lookup import OnlineReader
from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect
from featurepipe.store import FeatureStore
from featurepipe.testing import assert_parity
from tests.schema import frame, scaled, source
from tests.services import services
from tests.test_parity_properties import event_logs

__all__ = ["services"]

pytest_plugins = ["redis_server"]  # fixture redis_url

PART = st.one_of(st.text(alphabet="ab|\\%{}é", max_size=4), st.integers(-(2**63), 2**63 - 1))


# ---- the key's text --------------------------------------------------------------------------------


def test_the_composite_text_by_hand() -> None:
    assert compose_values(["u1", "m1"]) == "u1|m1"
    assert compose_values(["u|1", 42]) == "u\\|1|42"
    assert compose_values(["a\\", "b"]) == "a\\\\|b"  # a trailing backslash cannot eat the bar
    assert compose_values(["", -7]) == "|-7"
    assert compose_values(["x", None]) is None


@settings(max_examples=scaled(200))
@given(a=st.tuples(st.text(alphabet="ab|\\", max_size=4), st.text(alphabet="ab|\\", max_size=4)),
       b=st.tuples(st.text(alphabet="ab|\\", max_size=4), st.text(alphabet="ab|\\", max_size=4)))
def test_the_composite_text_is_injective(a: tuple[str, str], b: tuple[str, str]) -> None:
    assert (compose_values(a) == compose_values(b)) == (a == b)


@settings(max_examples=scaled(100))
@given(rows=st.lists(st.tuples(st.one_of(st.none(), st.text(alphabet="ab|\\%é", max_size=4)),
                               st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))), max_size=20))
def test_the_frame_rendering_equals_the_per_event_one(rows: list[tuple[str | None, int | None]]) -> None:
    df = pl.DataFrame({"s": [r[0] for r in rows], "n": [r[1] for r in rows]}, schema={"s": pl.String, "n": pl.Int64})
    got = df.select(compose_expr(["s", "n"], [pl.String(), pl.Int64()])).to_series().to_list()
    assert got == [compose(["s", "n"], {"s": s, "n": n}) for s, n in rows]


# ---- definitions -----------------------------------------------------------------------------------


def test_composite_keys_are_checked_at_definition_time() -> None:
    def make(key: Any) -> Any:
        return fp.feature_view(entity=fp.Entity("e", key=key), source=source, name="v")(lambda t: {"c": fp.count()})

    with pytest.raises(DefinitionError, match="key 'nope' is not a field"):
        make(("k", "nope"))
    with pytest.raises(DefinitionError, match="key 'x' is declared float"):
        make(("k", "x"))
    with pytest.raises(DefinitionError, match="names a field twice"):
        make(("k", "k"))
    v = make(("k", "n"))
    assert (v.entity.key, v.entity.parts, v.entity_dtype) == ("k+n", ("k", "n"), fp.ir.types.DType.STR)  # type: ignore[attr-defined]
    assert make("k").fingerprint != v.fingerprint and make(("n", "k")).fingerprint != v.fingerprint


# ---- parity on generated logs ---------------------------------------------------------------------


@settings(max_examples=scaled(60))
@given(rows=event_logs(), window=st.sampled_from([None, "5s", "30s"]))
def test_composite_views_are_bit_identical(rows: list[dict[str, Any]], window: str | None) -> None:
    pair = fp.Entity("pair", key=("k", "s"))
    v = fp.feature_view(entity=pair, source=source, name="pv", lateness="10s")(
        lambda t: {"c": fp.count(window=window), "sx": fp.sum(t.x, window=window), "l": fp.last(t.n)}
    )
    report = assert_parity(v, frame(rows))
    # events with a null part belong to no entity, as a null key
    assert report.skipped_null_entity == sum(1 for r in rows if r["s"] is None)


# ---- training sets, materialize and lookups ---------------------------------------------------------

DEFS = """
from datetime import datetime
from pydantic import BaseModel
import featurepipe as fp

class Tx(BaseModel):
    user_id: str
    merchant_id: int
    amount: float
    ts: datetime

tx = fp.Source("ck_tx", schema=Tx, timestamp="ts", batch=fp.ParquetSource("data/tx/"))
pair = fp.Entity("user_merchant", key=("user_id", "merchant_id"))
user = fp.Entity("user", key="user_id")

@fp.feature_view(entity=pair, source=tx, lateness="1h")
def pair_spend(t):
    return {"pair_n": fp.count(), "pair_sum": fp.sum(t.amount, window="1h")}

@fp.feature_view(entity=user, source=tx, lateness="1h")
def user_spend(t):
    return {"user_n": fp.count()}
"""
T0 = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = T0 + timedelta(hours=1)
AT_US = to_epoch_us(UNTIL)
TX = {
    "user_id": ["u1", "u1", "u1", "u|2"],
    "merchant_id": [7, 7, 8, 7],
    "amount": [1.0, 2.0, 4.0, 8.0],
    "ts": [T0 + timedelta(minutes=m) for m in (10, 20, 30, 40)],
}


@dataclass
class Repo:
    root: Path
    redis_url: str
    prefix: str


@pytest.fixture(scope="module")
def repo(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    root = tmp_path_factory.mktemp("composite")
    (root / "feature_defs").mkdir()
    (root / "feature_defs" / "defs.py").write_text(DEFS)
    (root / "data" / "tx").mkdir(parents=True)
    pl.DataFrame(
        TX, schema={"user_id": pl.String, "merchant_id": pl.Int64, "amount": pl.Float64, "ts": pl.Datetime("us", "UTC")}
    ).write_parquet(root / "data" / "tx" / "part-0.parquet")
    defs = load_definitions(root / "feature_defs")
    prefix = f"fptest-composite-{uuid.uuid4().hex[:12]}"
    client = connect(redis_url)
    for name in ("pair_spend", "user_spend"):
        materialize(defs.view(name), UNTIL, client, root=root, prefix=prefix)
    try:
        yield Repo(root, redis_url, prefix)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


# by hand: (u1, 7) has 2 events (1 + 2), (u1, 8) one (4), (u|2, 7) one (8); u1 3 events
WANT = [
    {"pair_n": 2, "pair_sum": 3.0, "pair_spend_found": True, "user_n": 3, "user_spend_found": True},
    {"pair_n": 1, "pair_sum": 4.0, "pair_spend_found": True, "user_n": 3, "user_spend_found": True},
    {"pair_n": 1, "pair_sum": 8.0, "pair_spend_found": True, "user_n": 1, "user_spend_found": True},
    {"pair_n": 0, "pair_sum": None, "pair_spend_found": False, "user_n": 0, "user_spend_found": False},
]
KEYS = {"user_id": ["u1", "u1", "u|2", "nobody"], "merchant_id": [7, 8, 7, 7]}


def test_training_sets_join_on_every_part(repo: Repo) -> None:
    store = FeatureStore(repo.root)
    labels = pl.DataFrame({**KEYS, "event_timestamp": [UNTIL] * 4})
    out = store.get_historical_features(labels, ["pair_spend", "user_spend"])
    assert out.select("pair_n", "pair_sum", "user_n").rows() == [
        (w["pair_n"], w["pair_sum"], w["user_n"]) for w in WANT
    ]
    with pytest.raises(DataError, match="entity frame lacks column 'merchant_id'"):
        store.get_historical_features(labels.drop("merchant_id"), ["pair_spend"])


def test_lookups_take_the_parts_as_columns(repo: Repo) -> None:
    reader = OnlineReader(connect(repo.redis_url), list(load_definitions(repo.root / "feature_defs").views.values()), repo.prefix)
    wanted = {"pair_spend": ["pair_n", "pair_sum"], "user_spend": ["user_n"]}
    assert reader.read_keyed(KEYS, wanted, at_us=AT_US) == WANT
    # one view: entities as tuples of the parts
    got = reader.read([("u1", 7), ("u|2", 7)], {"pair_spend": ["pair_n"]}, at_us=AT_US)
    assert [r["pair_n"] for r in got] == [2, 1]
    frame_ = reader.frame(KEYS, wanted, at_us=AT_US)
    assert frame_.columns[:2] == ["user_id", "merchant_id"] and frame_.schema["merchant_id"] == pl.Int64
    with pytest.raises(DataError, match=r"entity key 'merchant_id' .* is of type int"):
        reader.read_keyed({"user_id": ["u1"], "merchant_id": ["7"]}, wanted, at_us=AT_US)
    with pytest.raises(DataError, match="entities lack 'merchant_id'"):
        reader.read_keyed({"user_id": ["u1"]}, wanted, at_us=AT_US)
    with pytest.raises(DataError, match="give each entity as a tuple of 2 values"):
        reader.read(["u1"], {"pair_spend": ["pair_n"]}, at_us=AT_US)


def test_the_command_line_takes_each_part(repo: Repo) -> None:
    env = {**os.environ, "COLUMNS": "250"}
    out = subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", "get", "--features", "pair_spend:pair_n", "--entity", "user_id=u1",
         "--entity", "merchant_id=8", "--at", "2026-03-01T01:00:00Z", "--json", "--repo", str(repo.root),
         "--redis-url", repo.redis_url, "--prefix", repo.prefix],
        cwd=repo.root, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"pair_n": 1' in out.stdout


# ---- the stream, end to end --------------------------------------------------------------------------


@pytest.mark.usefixtures("kafka_client")
def test_end_to_end_parity_of_a_composite_key(services: Any, tmp_path: Path) -> None:
    """Messages keyed by the composite text, states in Redis under it, online values equal
    to the batch plan's for every (user, merchant) pair."""
    from featurepipe.dev.datagen import generate_transactions
    from featurepipe.parity.e2e import run_e2e

    root = Path(__file__).resolve().parents[1]
    fraud = (root / "feature_defs" / "fraud.py").read_text()
    contract = fraud[: fraud.index("EMPLOYMENT = ")]
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "pairs.py").write_text(contract + '''
pair = fp.Entity("user_merchant", key=("user_id", "merchant_id"))

@fp.feature_view(entity=pair, source=transactions, lateness="1h")
def pair_spend(t):
    return {
        "n_24h": fp.count(window="24h"),
        "sum_7d": fp.sum(t.amount, window="7d", default=0.0),
        "last_country": fp.last(t.country),
        "since_last_s": fp.since_last(t.event_time),
    }
''')
    defs = load_definitions(tmp_path / "defs")
    events = generate_transactions(6_000, users=60, merchants=8, seed=5)
    report = run_e2e(defs, "pair_spend", events, bootstrap=services.kafka_bootstrap, redis_url=services.redis_url)
    assert report.events == 6_000
    pairs = events.select("user_id", "merchant_id").unique().height
    assert report.queries == pairs * (1 + 2 + 1)  # newest event, 2 windows, a day past them
    assert report.mismatches == 0, [f.first for f in report.features if f.mismatched]


def test_fit_and_the_training_set_command_take_composite_keys(repo: Repo, tmp_path: Path) -> None:
    from featurepipe.batch.fit import fit

    report = fit(repo.root, "feature_defs", None, None, registry=tmp_path / "registry")
    assert report.views["pair_spend"]["points"] == 4
    labels = tmp_path / "labels.csv"
    labels.write_text("user_id,merchant_id,event_timestamp\nu1,7,2026-03-01T01:00:00Z\nu|2,7,2026-03-01T01:00:00Z\n")
    out_path = tmp_path / "ts.parquet"
    env = {**os.environ, "COLUMNS": "250"}
    out = subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", "training-set", "--features", "pair_spend:pair_n",
         "--entities", str(labels), "--out", str(out_path), "--repo", str(repo.root)],
        cwd=repo.root, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert pl.read_parquet(out_path)["pair_n"].to_list() == [2, 1]
