"""A newcomer's first hour with online lookups and the broker (issue 9), on the real services.

* entity values of the wrong type are refused (not looked up under a key that cannot exist);
  the command line reads them as the key's declared type;
* an unknown entity key names the known ones;
* one lookup joins views of different entities, row by row, in one Redis round trip;
* ``get --json`` prints the rows exactly;
* an unreachable broker is one line naming the address, exit code 2, within seconds;
* one topic feeding views of different entity keys is refused when the definitions load.

Every expected value below is worked out by hand from the events written here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis

from featurepipe import load_definitions
from featurepipe.dev import infra
from featurepipe.errors import DataError, DefinitionError
from featurepipe.online.lookup import OnlineReader
from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect
from featurepipe.store import FeatureStore
from tests.services import services, unique

__all__ = ["services"]

T0 = datetime(2026, 4, 1, tzinfo=UTC)
UNTIL = T0 + timedelta(hours=1)  # materialized up to here; every event is before it
AT = "2026-04-01T01:00:00Z"  # lookups are made at UNTIL

DEFS = """
from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Tx(BaseModel):
    user_id: str
    merchant_id: str
    amount: float
    ts: datetime


class Click(BaseModel):
    account: int
    page: str
    ts: datetime


tx = fp.Source("tx", schema=Tx, timestamp="ts", batch=fp.ParquetSource("data/tx/"))
clicks = fp.Source(
    "clicks", schema=Click, timestamp="ts", batch=fp.ParquetSource("data/clicks/"),
    stream=fp.KafkaSource(topic="clicks"),
)


@fp.feature_view(entity=fp.Entity("user", key="user_id"), source=tx)
def by_user(t):
    return {"n": fp.count(), "total": fp.sum(t.amount, default=0.0)}


@fp.feature_view(entity=fp.Entity("merchant", key="merchant_id"), source=tx)
def by_merchant(t):
    return {"m_n": fp.count(), "m_max": fp.max(t.amount)}


@fp.feature_view(entity=fp.Entity("account", key="account"), source=clicks)
def by_account(t):
    return {"clicks": fp.count(), "last_page": fp.last(t.page)}
"""

# 4096.1 is a multiple of 2**-40 (its ulp), so its sum is exact: a lone 4096.1 sums to 4096.1
TX = {
    "user_id": ["u1", "u1", "u2"],
    "merchant_id": ["m1", "m2", "m1"],
    "amount": [1.5, 2.25, 4096.1],
    "ts": [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)],
}
CLICKS = {
    "account": [42, 42, 7],
    "page": ["home", "cart", "home"],
    "ts": [T0, T0 + timedelta(minutes=5), T0 + timedelta(minutes=6)],
}


@dataclass
class Repo:
    root: Path
    redis_url: str
    prefix: str

    def store(self) -> FeatureStore:
        return FeatureStore(self.root, redis_url=self.redis_url, prefix=self.prefix)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _fp(
            self.root,
            *args,
            "--repo",
            str(self.root),
            "--redis-url",
            self.redis_url,
            "--prefix",
            self.prefix,
        )


def _fp(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}  # rich wraps to the terminal width
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _write_repo(root: Path) -> None:
    (root / "feature_defs").mkdir(parents=True)
    (root / "feature_defs" / "first_hour.py").write_text(DEFS)
    ts = pl.Datetime("us", "UTC")
    (root / "data" / "tx").mkdir(parents=True)
    pl.DataFrame(
        TX, schema={"user_id": pl.String, "merchant_id": pl.String, "amount": pl.Float64, "ts": ts}
    ).write_parquet(root / "data" / "tx" / "part-0.parquet")
    (root / "data" / "clicks").mkdir(parents=True)
    pl.DataFrame(CLICKS, schema={"account": pl.Int64, "page": pl.String, "ts": ts}).write_parquet(
        root / "data" / "clicks" / "part-0.parquet"
    )


@pytest.fixture(scope="module")
def repo(services: infra.DevServices, tmp_path_factory: pytest.TempPathFactory) -> Repo:
    root = tmp_path_factory.mktemp("first-hour")
    _write_repo(root)
    prefix = unique("fp-first-hour")
    client = connect(services.redis_url)
    defs = load_definitions(root / "feature_defs")
    for name in ("by_user", "by_merchant", "by_account"):
        materialize(defs.view(name), UNTIL, client, root=root, prefix=prefix)
    client.close()
    return Repo(root, services.redis_url, prefix)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- 1. entity key types --------------------------------------------------------------------------
def test_cli_reads_an_int_entity_key_as_an_int(repo: Repo) -> None:
    out = repo.cli(
        "get", "--entity", "account=42", "--features", "by_account", "--at", AT, "--json"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == [
        {"account": 42, "clicks": 2, "last_page": "cart", "by_account_found": True}
    ]


def test_cli_refuses_text_that_is_not_of_the_key_type(repo: Repo) -> None:
    out = repo.cli("get", "--entity", "account=abc", "--features", "by_account", "--at", AT)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    line = out.stdout
    assert "'account'" in line and "abc" in line and "int" in line, line


@pytest.mark.parametrize("bad", ["42", 42.0, True, None])
def test_a_value_of_the_wrong_type_for_an_int_key_raises(repo: Repo, bad: Any) -> None:
    store = repo.store()
    with pytest.raises(DataError) as info:
        store.get_online_features({"account": [42, bad]}, ["by_account:clicks"], at=UNTIL)
    message = str(info.value)
    assert "'account'" in message and repr(bad) in message and "int" in message, message


def test_an_int_for_a_str_key_raises(repo: Repo) -> None:
    with pytest.raises(DataError, match=r"'user_id'.*str.*got 1 \(int\)"):
        repo.store().get_online_features({"user_id": [1]}, ["by_user:n"], at=UNTIL)


def test_unknown_entity_key_names_the_known_key(repo: Repo) -> None:
    store = repo.store()
    for entities in (
        {"userId": ["u1"]},
        [{"userId": "u1"}],
        {"user_id": ["u1"], "userid": ["u1"]},  # a typo next to the right key is not ignored
    ):
        with pytest.raises(DataError, match=r"unknown entity key 'user[iI]d'.*'user_id'"):
            store.get_online_features(entities, ["by_user:n"], at=UNTIL)
    out = repo.cli("get", "--entity", "userId=u1", "--features", "by_user", "--at", AT)
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    assert "'userId'" in out.stdout and "'user_id'" in out.stdout, out.stdout


# -- 2. several entity keys in one lookup ---------------------------------------------------------
WANT_ROWS = [
    # user_id, merchant_id, n, total, by_user_found, m_n, m_max, by_merchant_found
    ("u1", "m1", 2, 3.75, True, 2, 4096.1, True),
    ("u2", "m2", 1, 4096.1, True, 1, 2.25, True),
    ("u3", "m1", 0, 0.0, False, 2, 4096.1, True),
    ("u1", "m9", 2, 3.75, True, 0, None, False),
]
COLUMNS = [
    "user_id",
    "merchant_id",
    "n",
    "total",
    "by_user_found",
    "m_n",
    "m_max",
    "by_merchant_found",
]


def test_views_of_two_entities_join_row_by_row(repo: Repo) -> None:
    store = repo.store()
    columns = {"user_id": ["u1", "u2", "u3", "u1"], "merchant_id": ["m1", "m2", "m1", "m9"]}
    df = store.get_online_features(columns, ["by_user", "by_merchant"], at=UNTIL)
    assert df.columns == COLUMNS
    assert df.rows() == WANT_ROWS
    # the same request as rows, and as a DataFrame
    rows = [dict(zip(("user_id", "merchant_id"), r[:2], strict=True)) for r in WANT_ROWS]
    assert store.get_online_features(rows, ["by_user", "by_merchant"], at=UNTIL).rows() == WANT_ROWS
    frame = pl.DataFrame(columns)
    assert (
        store.get_online_features(frame, ["by_user", "by_merchant"], at=UNTIL).rows() == WANT_ROWS
    )
    dicts = store.get_online_features(columns, ["by_user", "by_merchant"], at=UNTIL, as_dicts=True)
    assert [tuple(d.values()) for d in dicts] == [r[2:] for r in WANT_ROWS]


def test_single_key_lookup_keeps_its_columns(repo: Repo) -> None:
    df = repo.store().get_online_features({"user_id": ["u2", "u3"]}, ["by_user:total"], at=UNTIL)
    assert df.columns == ["user_id", "total", "by_user_found"]
    assert df.rows() == [("u2", 4096.1, True), ("u3", 0.0, False)]


def test_key_columns_of_different_lengths_or_a_missing_key_raise(repo: Repo) -> None:
    store = repo.store()
    with pytest.raises(
        DataError, match=r"one value per request row.*2 for 'user_id', 1 for 'merchant_id'"
    ):
        store.get_online_features(
            {"user_id": ["u1", "u2"], "merchant_id": ["m1"]}, ["by_user", "by_merchant"], at=UNTIL
        )
    with pytest.raises(DataError, match=r"lack 'merchant_id'"):
        store.get_online_features({"user_id": ["u1"]}, ["by_user", "by_merchant"], at=UNTIL)
    with pytest.raises(DataError, match=r"entity row 1 lacks 'merchant_id'"):
        store.get_online_features(
            [{"user_id": "u1", "merchant_id": "m1"}, {"user_id": "u2"}],
            ["by_user", "by_merchant"],
            at=UNTIL,
        )


class CountingConnection(redis.Connection):
    """A real connection that counts what it sends to the server: one send per command or
    pipeline, a round trip each."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


def test_two_entities_are_read_in_one_round_trip(repo: Repo) -> None:
    defs = load_definitions(repo.root / "feature_defs")
    client = redis.Redis.from_url(repo.redis_url, connection_class=CountingConnection)
    reader = OnlineReader(client, [defs.view("by_user"), defs.view("by_merchant")], repo.prefix)
    client.ping()  # connected: the handshake is not counted
    CountingConnection.sends = 0
    rows = reader.read_keyed(
        {"user_id": ["u1", "u3"], "merchant_id": ["m2", "m1"]},
        {"by_user": ["n"], "by_merchant": ["m_n"]},
        at_us=int(UNTIL.timestamp()) * 1_000_000,
    )
    assert CountingConnection.sends == 1
    assert reader.store.transaction_reads  # the transaction, not the pipeline fallback
    assert rows == [
        {"n": 2, "by_user_found": True, "m_n": 1, "by_merchant_found": True},
        {"n": 0, "by_user_found": False, "m_n": 2, "by_merchant_found": True},
    ]


def test_cli_repeated_entities_form_rows_by_position_as_json(repo: Repo) -> None:
    out = repo.cli(
        "get",
        "--entity",
        "user_id=u1",
        "--entity",
        "merchant_id=m1",
        "--entity",
        "user_id=u3",
        "--entity",
        "merchant_id=m9",
        "--features",
        "by_user,by_merchant:m_max",
        "--at",
        AT,
        "--json",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4096.1," in out.stdout  # printed exactly, as Python prints the float
    assert json.loads(out.stdout) == [
        {
            "user_id": "u1",
            "merchant_id": "m1",
            "n": 2,
            "total": 3.75,
            "by_user_found": True,
            "m_max": 4096.1,
            "by_merchant_found": True,
        },
        {
            "user_id": "u3",
            "merchant_id": "m9",
            "n": 0,
            "total": 0.0,
            "by_user_found": False,
            "m_max": None,
            "by_merchant_found": False,
        },
    ]
    uneven = repo.cli(
        "get",
        "--entity",
        "user_id=u1",
        "--entity",
        "user_id=u2",
        "--entity",
        "merchant_id=m1",
        "--features",
        "by_user,by_merchant",
        "--at",
        AT,
    )
    assert uneven.returncode == 2 and "Traceback" not in uneven.stdout + uneven.stderr
    assert "one value per request row" in uneven.stdout, uneven.stdout


# -- 4. an unreachable broker -------------------------------------------------------------------
@pytest.mark.parametrize("command", ["stream", "parity", "recover"])
def test_unreachable_broker_is_one_line_and_exit_code_2(repo: Repo, command: str) -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    args = {
        "stream": ["stream", "--idle-exit", "1"],
        "parity": ["parity", "--e2e", "--events", str(repo.root / "data/clicks/part-0.parquet")],
        "recover": ["recover", "--until", AT],
    }[command]
    prefix = unique("fp-nobroker")
    t = time.monotonic()
    out = _fp(
        repo.root,
        *args,
        "--repo",
        str(repo.root),
        "--bootstrap",
        bootstrap,
        "--redis-url",
        repo.redis_url,
        *([] if command == "parity" else ["--prefix", prefix]),
    )
    elapsed = time.monotonic() - t
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text, text
    assert f"Kafka broker at {bootstrap} is unreachable" in out.stdout, text
    assert elapsed < 25, elapsed  # the clients' own timeout is 30 s or more
    if command == "recover":  # nothing changed in the store
        client = connect(repo.redis_url)
        assert not list(client.scan_iter(match=f"{prefix}:*"))
        client.close()


# -- 5. one topic, one entity key ---------------------------------------------------------------
TOPIC_DEFS = """
from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Tx(BaseModel):
    user_id: str
    merchant_id: str
    amount: float
    ts: datetime


tx = fp.Source("tx", schema=Tx, timestamp="ts", stream=fp.KafkaSource(topic="payments"))


@fp.feature_view(entity=fp.Entity("user", key="user_id"), source=tx)
def spend_by_user(t):
    return {"n": fp.count()}


@fp.feature_view(entity=fp.Entity("user", key="user_id"), source=tx)
def max_by_user(t):
    return {"top": fp.max(t.amount)}
"""
OTHER_KEY = """

@fp.feature_view(entity=fp.Entity("merchant", key="merchant_id"), source=tx)
def spend_by_merchant(t):
    return {"m": fp.count()}
"""


def test_views_of_one_key_may_share_a_topic(tmp_path: Path) -> None:
    (tmp_path / "defs.py").write_text(TOPIC_DEFS)
    defs = load_definitions(tmp_path / "defs.py")
    assert sorted(defs.views) == ["max_by_user", "spend_by_user"]


def test_one_topic_feeding_two_entity_keys_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "feature_defs").mkdir()
    (tmp_path / "feature_defs" / "defs.py").write_text(TOPIC_DEFS + OTHER_KEY)
    with pytest.raises(DefinitionError) as info:
        load_definitions(tmp_path / "feature_defs")
    message = str(info.value)
    for part in (
        "'payments'",
        "'spend_by_user'",
        "'spend_by_merchant'",
        "'user_id'",
        "'merchant_id'",
    ):
        assert part in message, message
    out = _fp(tmp_path, "plan", "--repo", str(tmp_path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "'payments'" in out.stdout and "'spend_by_merchant'" in out.stdout, out.stdout
