"""Review findings on the online and streaming commands, on the real services.

* ``produce_frame`` sends idempotently, without kafka-python's "Idempotence will be disabled"
  warning, and in row order;
* a ``--fingerprint`` pin of a view that is not requested is refused, naming the pin;
* ``stream --view`` with an unknown view (or one without a stream source) is refused, naming
  the views that have a stream source;
* an unreachable broker is one line for ``stream``, ``produce`` and ``dlq list``;
* a definition edited after materialization: ``get`` and ``stream`` say what to do;
* a store never materialized is told apart from one emptied or rolled back (both refused);
* ``get`` prints at most 4 request rows per table, as many as fit, nothing folded;
* ``dlq replay`` prints no kafka-python warning about a consumer without a group.

Every expected value below is worked out by hand from the events written here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from featurepipe import load_definitions
from featurepipe.dev import infra
from featurepipe.errors import DataError
from featurepipe.online.layout import OnlineStoreLayout
from featurepipe.online.lookup import OnlineReader
from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect
from featurepipe.online.state_store import StoreNotInitializedError
from featurepipe.store import FeatureStore
from featurepipe.stream.dlq import TopicReader
from featurepipe.stream.produce import ensure_topics, produce_frame
from tests.services import services, unique

__all__ = ["services"]

T0 = datetime(2026, 4, 1, tzinfo=UTC)
UNTIL = T0 + timedelta(hours=1)  # materialized up to here; every event is before it
AT = "2026-04-01T01:00:00Z"  # lookups are made at UNTIL
UNREACHABLE = "127.0.0.1:1"

DEFS = """
from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Tx(BaseModel):
    user_id: str
    amount: float
    ts: datetime


class Click(BaseModel):
    account: int
    page: str
    ts: datetime


tx = fp.Source("tx", schema=Tx, timestamp="ts", batch=fp.ParquetSource("data/tx/"))
clicks = fp.Source(
    "clicks", schema=Click, timestamp="ts", batch=fp.ParquetSource("data/clicks/"),
    stream=fp.KafkaSource(topic="TOPIC"),
)


@fp.feature_view(entity=fp.Entity("user", key="user_id"), source=tx)
def by_user(t):
    return {"n": fp.count(), "total": fp.sum(t.amount, default=0.0)}


@fp.feature_view(entity=fp.Entity("account", key="account"), source=clicks)
def by_account(t):
    return {"clicks": fp.count(), "last_page": fp.last(t.page)}
"""

# 4096.1 is a multiple of 2**-40 (its ulp), so its sum is exact: a lone 4096.1 sums to 4096.1
TX = {
    "user_id": ["u1", "u1", "u2"],
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
    bootstrap: str
    prefix: str
    topic: str

    def cli(self, command: str, *args: str, columns: int = 250) -> subprocess.CompletedProcess[str]:
        return _fp(self.root, command, *args, "--repo", str(self.root), columns=columns)

    def online(
        self, command: str, *args: str, columns: int = 250
    ) -> subprocess.CompletedProcess[str]:
        """A command of the online store: this repo's Redis and prefix."""
        return self.cli(
            command, *args, "--redis-url", self.redis_url, "--prefix", self.prefix, columns=columns
        )


def _fp(cwd: Path, command: str, *args: str, columns: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}  # rich wraps to the terminal width
    words = command.split()  # "dlq list" is a group and its command
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *words, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def _make_repo(root: Path, services: infra.DevServices) -> Repo:
    topic = unique("clicks")
    (root / "feature_defs").mkdir(parents=True)
    (root / "feature_defs" / "review.py").write_text(DEFS.replace("TOPIC", topic))
    ts = pl.Datetime("us", "UTC")
    (root / "data" / "tx").mkdir(parents=True)
    pl.DataFrame(TX, schema={"user_id": pl.String, "amount": pl.Float64, "ts": ts}).write_parquet(
        root / "data" / "tx" / "part-0.parquet"
    )
    (root / "data" / "clicks").mkdir(parents=True)
    pl.DataFrame(CLICKS, schema={"account": pl.Int64, "page": pl.String, "ts": ts}).write_parquet(
        root / "data" / "clicks" / "part-0.parquet"
    )
    prefix = unique("fp-review")
    client = connect(services.redis_url)
    defs = load_definitions(root / "feature_defs")
    for name in ("by_user", "by_account"):
        materialize(defs.view(name), UNTIL, client, root=root, prefix=prefix)
    client.close()
    return Repo(root, services.redis_url, services.kafka_bootstrap, prefix, topic)


@pytest.fixture(scope="module")
def repo(services: infra.DevServices, tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return _make_repo(tmp_path_factory.mktemp("review"), services)


def _lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]


# -- 1. produce_frame: idempotent, no warning, in row order --------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_produce_frame_sends_idempotently_in_row_order_without_a_warning(
    services: infra.DevServices,
) -> None:
    topic = unique("tx-frame")
    ensure_topics(services.kafka_bootstrap, {topic: 1})
    frame = pl.DataFrame(
        TX, schema={"user_id": pl.String, "amount": pl.Float64, "ts": pl.Datetime("us", "UTC")}
    )
    logger = logging.getLogger("kafka")
    level = logger.level
    records = _Records()
    logger.addHandler(records)
    logger.setLevel(logging.WARNING)
    try:
        sent = produce_frame(frame, topic, services.kafka_bootstrap, "user_id")
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    assert sent == 3
    assert not [m for m in records.messages if "dempotence" in m], records.messages
    got = [(r.key, r.value) for r in TopicReader(services.kafka_bootstrap, topic)]
    assert got == [
        (b"u1", b'{"user_id":"u1","amount":1.5,"ts":"2026-04-01T00:00:00.000000+00:00"}'),
        (b"u1", b'{"user_id":"u1","amount":2.25,"ts":"2026-04-01T00:01:00.000000+00:00"}'),
        (b"u2", b'{"user_id":"u2","amount":4096.1,"ts":"2026-04-01T00:02:00.000000+00:00"}'),
    ]


# -- 2. a pin of a view that is not requested -----------------------------------------------------
@pytest.mark.parametrize("pin", ["by_usr=abc", "by_account=abc"])  # a typo; a view not requested
def test_get_refuses_a_pin_of_a_view_not_requested(repo: Repo, pin: str) -> None:
    out = repo.online(
        "get", "--entity", "user_id=u1", "--features", "by_user", "--at", AT, "--fingerprint", pin
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert _lines(out) == [
        f"error: fingerprint pin {pin}: no requested view of that name (the requested views "
        "are 'by_user'); pin one of them, or request the view"
    ]


def test_a_pin_of_a_view_not_requested_raises_in_the_api(repo: Repo) -> None:
    store = FeatureStore(repo.root, redis_url=repo.redis_url, prefix=repo.prefix)
    with pytest.raises(DataError, match=r"pins by_account=x, by_usr=y: .*'by_user'"):
        store.get_online_features(
            {"user_id": ["u1"]},
            ["by_user:n"],
            at=UNTIL,
            fingerprints={"by_account": "x", "by_usr": "y"},
        )
    # a pin of the requested view, right, still serves
    fingerprint = store.definitions.view("by_user").fingerprint
    df = store.get_online_features(
        {"user_id": ["u1"]}, ["by_user:n"], at=UNTIL, fingerprints={"by_user": fingerprint}
    )
    assert df.rows() == [("u1", 2, True)]


# -- 3. stream --view names -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("views", "problem"),
    [
        (["by_acount"], "unknown view 'by_acount'"),
        (["by_account", "typo"], "unknown view 'typo'"),
        (
            ["typo", "by_user", "other"],
            "unknown views 'typo', 'other'; view 'by_user' has no stream source",
        ),
    ],
)
def test_stream_refuses_unknown_view_names(repo: Repo, views: list[str], problem: str) -> None:
    args = [a for v in views for a in ("--view", v)]
    out = repo.online(
        "stream", *args, "--bootstrap", repo.bootstrap, "--group", unique("g"), "--idle-exit", "1"
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert _lines(out) == [f"error: {problem}: the views with a stream source are 'by_account'"]


# -- 4. an unreachable broker: one line -----------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "purpose"),
    [("stream", "stream worker"), ("produce", "produce"), ("dlq list", "dlq list")],
)
def test_unreachable_broker_is_one_line(repo: Repo, command: str, purpose: str) -> None:
    extra = {
        "stream": ["--idle-exit", "1", "--redis-url", repo.redis_url, "--prefix", repo.prefix],
        "produce": ["--view", "by_account", "--events", "data/clicks/part-0.parquet"],
        "dlq list": ["--view", "by_account"],
    }[command]
    out = repo.cli(command, "--bootstrap", UNREACHABLE, *extra)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = _lines(out)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"error: Kafka broker at {UNREACHABLE} is unreachable ({purpose}): "
    ), lines


# -- 5. an edited definition: what to do ----------------------------------------------------------
def _edit(root: Path) -> None:
    """Change both views' definitions (their fingerprints change)."""
    path = root / "feature_defs" / "review.py"
    text = path.read_text()
    text = text.replace('"n": fp.count()', '"n": fp.count(window="1d")')
    text = text.replace('"clicks": fp.count()', '"clicks": fp.count(window="1d")')
    path.write_text(text)


def test_an_edited_definition_says_what_to_do(services: infra.DevServices, tmp_path: Path) -> None:
    repo = _make_repo(tmp_path / "edited", services)
    defs = load_definitions(repo.root / "feature_defs")
    old_user, old_account = defs.view("by_user").fingerprint, defs.view("by_account").fingerprint
    _edit(repo.root)
    defs = load_definitions(repo.root / "feature_defs")
    new_user, new_account = defs.view("by_user").fingerprint, defs.view("by_account").fingerprint
    assert (new_user, new_account) != (old_user, old_account)

    out = repo.online("get", "--entity", "user_id=u1", "--features", "by_user", "--at", AT)
    assert out.returncode == 2, out.stdout + out.stderr
    assert _lines(out) == [
        f"error: view 'by_user': the online store serves version {old_user} for entity 'u1', "
        f"the loaded definitions are {new_user}. To serve {new_user}, run `featurepipe "
        "materialize --until <cut-over>` (or `featurepipe recover --until <cut-over>` when a "
        f"stream worker feeds the store); to keep serving {old_user}, look up with that "
        "version's definitions (`--defs`)"
    ]

    out = repo.online(
        "stream", "--bootstrap", repo.bootstrap, "--group", unique("g"), "--idle-exit", "1"
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert _lines(out)[-1] == (
        f"error: view 'by_account': materialized version {old_account} differs from this "
        f"worker's {new_account}. To stream this version, rebuild the store for it with "
        "`featurepipe recover --until <cut-over>` (or `featurepipe materialize --until "
        "<cut-over>` when no stream worker feeds it), then start the workers; to keep the "
        "materialized version, run the workers with its definitions (`--defs`)"
    )

    # the remedy works: materialized again for the new version, the lookup serves it
    out = repo.online("materialize", "--until", AT, "--view", "by_user")
    assert out.returncode == 0, out.stdout + out.stderr
    out = repo.online(
        "get", "--entity", "user_id=u1", "--features", "by_user", "--at", AT, "--json"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == [
        {"user_id": "u1", "n": 2, "total": 3.75, "by_user_found": True}
    ]


# -- 6. never materialized vs emptied or rolled back ----------------------------------------------
def test_a_store_never_materialized_says_materialize_first(repo: Repo) -> None:
    prefix = unique("fp-never")
    out = repo.cli(
        "get", "--entity", "user_id=u1", "--features", "by_user", "--at", AT,
        "--redis-url", repo.redis_url, "--prefix", prefix,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert _lines(out) == [
        f"error: the online store under prefix '{prefix}' holds no generation and no key: "
        "nothing was materialized there. Run `featurepipe materialize --until <cut-over>` "
        "first, or check the prefix (--prefix) and the Redis URL; if this store was emptied "
        "(FLUSHALL, a Redis restart without persistence), `featurepipe recover --until "
        "<cut-over>` rebuilds it"
    ]
    client = connect(repo.redis_url)
    assert not list(client.scan_iter(match=f"{prefix}:*"))  # the lookup wrote nothing
    client.close()


def test_a_store_that_lost_its_generation_says_recover(
    services: infra.DevServices, tmp_path: Path
) -> None:
    repo = _make_repo(tmp_path / "rolled-back", services)
    client = connect(repo.redis_url)
    # what a restore of a snapshot older than the store's generation leaves: states, no epoch
    assert client.delete(OnlineStoreLayout(repo.prefix).generation_key()) == 1
    for entity in ("u1", "u9"):  # an entity with a state, and one without: both refused
        out = repo.online("get", "--entity", f"user_id={entity}", "--features", "by_user")
        assert out.returncode == 2, out.stdout + out.stderr
        assert _lines(out) == [
            f"error: the online store under prefix '{repo.prefix}' holds no generation: it was "
            "emptied or rolled back (a Redis restart without persistence, FLUSHALL, an older "
            "snapshot restored). Nothing it holds can be served; rebuild it with `featurepipe "
            "recover --until <cut-over>`"
        ]
    reader = OnlineReader(client, [load_definitions(repo.root / "feature_defs").view("by_user")],
                          repo.prefix)  # fmt: skip
    with pytest.raises(StoreNotInitializedError, match="emptied or rolled back"):
        reader.read(["u9"], {"by_user": ["n"]})
    client.close()


# -- 7. get: the transposed table in chunks -------------------------------------------------------
FIVE = ["u1", "u2", "u3", "u1", "u2"]
# feature -> its value in each of the 5 request rows
VALUES = {
    "user_id": ["u1", "u2", "u3", "u1", "u2"],
    "n": ["2", "1", "0", "2", "1"],
    "total": ["3.75", "4096.1", "0.0", "3.75", "4096.1"],
    "by_user_found": ["True", "True", "False", "True", "True"],
}


def _tables(text: str) -> list[tuple[str, list[str], dict[str, list[str]]]]:
    """(title, header cells, feature -> cells) of each table printed."""
    out: list[tuple[str, list[str], dict[str, list[str]]]] = []
    title = ""
    for line in text.splitlines():
        if line.startswith("┃"):
            out.append((title, [c.strip() for c in line.strip("┃").split("┃")], {}))
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            out[-1][2][cells[0]] = cells[1:]
        elif line.strip() and line.strip()[0] not in "┏┡└":
            title = line.strip()
    return out


@pytest.mark.parametrize(
    ("columns", "chunks"),
    [
        (80, [("rows 1-4 of 5", [1, 2, 3, 4]), ("row 5 of 5", [5])]),
        # "feature" column: 13 + 4; a request row: 9 ("4096.1" and "row 1" padded, a border)
        (40, [("rows 1-2 of 5", [1, 2]), ("rows 3-4 of 5", [3, 4]), ("row 5 of 5", [5])]),
    ],
)
def test_get_prints_at_most_four_request_rows_per_table(
    repo: Repo, columns: int, chunks: list[tuple[str, list[int]]]
) -> None:
    args = [a for u in FIVE for a in ("--entity", f"user_id={u}")]
    out = repo.online("get", *args, "--features", "by_user", "--at", AT, columns=columns)
    assert out.returncode == 0, out.stdout + out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= columns, out.stdout
    tables = _tables(out.stdout)
    assert [(t, h) for t, h, _ in tables] == [
        (title, ["feature", *(f"row {i}" for i in rows)]) for title, rows in chunks
    ], out.stdout
    for (_, _, cells), (_, rows) in zip(tables, chunks, strict=True):
        assert cells == {f: [v[i - 1] for i in rows] for f, v in VALUES.items()}, out.stdout


def test_get_of_few_rows_is_one_table_without_title(repo: Repo) -> None:
    out = repo.online(
        "get", "--entity", "user_id=u2", "--entity", "user_id=u3", "--features", "by_user",
        "--at", AT, columns=80,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert _tables(out.stdout) == [
        (
            "",
            ["feature", "row 1", "row 2"],
            {
                "user_id": ["u2", "u3"],
                "n": ["1", "0"],
                "total": ["4096.1", "0.0"],
                "by_user_found": ["True", "False"],
            },
        )
    ]


# -- 8. dlq replay: no warning about a consumer without a group ------------------------------------
def test_dlq_replay_prints_no_kafka_warning(repo: Repo, tmp_path: Path) -> None:
    events = tmp_path / "bad.jsonl"
    events.write_text(
        '{"account": 42, "page": "cart", "ts": "2026-04-01T00:30:00.000000+00:00"}\n'
        '{"account": "abc", "page": "home", "ts": "2026-04-01T00:31:00.000000+00:00"}\n'
    )
    b = repo.bootstrap
    out = repo.cli("produce", "--view", "by_account", "--events", str(events), "--bootstrap", b)
    assert out.returncode == 0, out.stdout + out.stderr
    prefix, group = unique("fp-dlq"), unique("g-dlq")
    out = repo.cli(
        "stream", "--bootstrap", b, "--redis-url", repo.redis_url, "--prefix", prefix,
        "--group", group, "--idle-exit", "2",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 events, 1 valid, 1 to the dead-letter topic" in out.stdout, out.stdout
    out = repo.cli("dlq replay", "--view", "by_account", "--bootstrap", b)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "kafka." not in text and "group_id" not in text, text
    assert re.match(
        rf"replayed 1 dead letters of {re.escape(repo.topic)}\.dlq to {re.escape(repo.topic)} ",
        _lines(out)[0],
    ), text
