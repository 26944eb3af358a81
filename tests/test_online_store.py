"""The online store against a real Redis-protocol server (see tests/redis_server.py).

The central claim: the state that ``materialize`` writes, read back from Redis and queried at
the cut-over instant, equals the batch plan at that instant bit for bit, and a stream that
continues from it with the events at or after the cut-over equals the batch plan over the whole
log.
"""

from __future__ import annotations

import math
import socket
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import polars as pl
import pytest
import redis

from featurepipe import load_definitions
from featurepipe.batch.sources import read_events
from featurepipe.compile.polars_aggs import SEQ, TS, BatchProgram
from featurepipe.compile.polars_rows import PL_TYPES
from featurepipe.compile.python_state import ViewProgram
from featurepipe.dev.datagen import generate_transactions
from featurepipe.dsl.definitions import FeatureView
from featurepipe.ir.timebase import to_epoch_us
from featurepipe.online.cli_materialize import materialize_command, parse_until
from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.layout import (
    CUTOVER_EVENT_TIME,
    FINGERPRINT_FIELD,
    STATE_FIELD,
    OnlineStoreLayout,
    ViewMeta,
    decode_entity,
    encode_entity,
    meta_key,
    state_key,
)
from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect, resolve_url

if TYPE_CHECKING:
    from redis_server import Store

pytest_plugins = ["redis_server"]  # fixtures redis_url, store

ROOT = Path(__file__).resolve().parents[1]


class Log:
    def __init__(self, view: FeatureView, path: Path, until: datetime) -> None:
        self.view = view
        self.path = path
        self.until = until
        self.until_us = to_epoch_us(until)
        self.key = view.entity.key


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    view = load_definitions(ROOT / "feature_defs").view("user_spend")
    df = generate_transactions(20_000, users=300, seed=11).with_columns(
        pl.col("amount")
    )
    path = tmp_path_factory.mktemp("online") / "transactions.parquet"
    df.write_parquet(path)
    # cut over exactly at an event's timestamp: that event (and its ties) belong to the stream
    t = df["event_time"].sort()[df.height * 2 // 3]
    return Log(view, path, t)


def _states(s: Store, log: Log, prefix: str, entities: list[Any]) -> dict[Any, dict[bytes, bytes]]:
    layout = OnlineStoreLayout(prefix)
    pipe = s.client.pipeline(transaction=False)
    for e in entities:
        pipe.hgetall(layout.state_key(log.view, e))
    return dict(zip(entities, pipe.execute(), strict=True))


def _same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality: floats by IEEE bit pattern (NaN == NaN), type included."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return struct.pack("<d", a) == struct.pack("<d", b)
    return type(a) is type(b) and a == b


def _compare(log: Log, prog: ViewProgram, batch: pl.DataFrame, got: list[tuple[Any, ...]]) -> None:
    casts = [pl.col(f.name).cast(PL_TYPES[f.expr.dtype]) for f in log.view.ir.features]
    want = batch.select(casts).rows()
    assert len(want) == len(got)
    bad = [
        (i, name, w[j], g[j])
        for i, (w, g) in enumerate(zip(want, got, strict=True))
        for j, name in enumerate(log.view.feature_names)
        if not _same(w[j], g[j])
    ]
    assert not bad, f"{len(bad)} mismatches, first: {bad[:5]}"


# -- (a) materialized state == batch at the cut-over ------------------------------------------
def test_materialized_state_equals_batch(store: Store, log: Log) -> None:
    report = materialize(
        log.view, log.until, store.client, path=log.path, prefix=store.prefix, batch_size=64
    )
    lf, _ = read_events(log.view.source, path=log.path, end=log.until)
    ev = lf.collect()
    assert ev[TS].max() < log.until_us
    entities = ev[log.key].unique().sort().to_list()
    assert report.entities == len(entities) > 250
    assert report.events == ev.height
    assert report.batches == math.ceil(len(entities) / 64)
    assert report.resumed_from is None

    # exactly one state key per entity, nothing else besides the meta key
    layout = OnlineStoreLayout(store.prefix)
    expected_keys = {layout.state_key(log.view, e).encode() for e in entities}
    assert set(store.all_keys()) == expected_keys | {
        layout.meta_key(log.view).encode(),
        layout.generation_key().encode(),
    }

    prog = ViewProgram(log.view.ir)
    raw = _states(store, log, store.prefix, entities)
    got = []
    for e in entities:
        h = raw[e]
        assert h[FINGERPRINT_FIELD.encode()] == log.view.fingerprint.encode()
        got.append(prog.query(prog.loads(h[STATE_FIELD.encode()]), log.until_us))
    queries = pl.DataFrame({log.key: entities, TS: [log.until_us] * len(entities)})
    batch = BatchProgram(log.view.ir).features(ev.lazy(), queries)
    assert batch[log.key].to_list() == entities
    _compare(log, prog, batch, got)
    counts = batch["txn_count_24h"].to_list()
    assert sum(counts) > 0 and any(c == 0 for c in counts)  # not a vacuous comparison


def test_stream_continues_from_cutover(store: Store, log: Log) -> None:
    """Materialized state + the events with ts >= until, in arrival order == batch, full log."""
    materialize(log.view, log.until, store.client, path=log.path, prefix=store.prefix)
    full, _ = read_events(log.view.source, path=log.path)
    ev = full.collect()
    names = list(log.view.source.fields)
    prog = ViewProgram(log.view.ir)
    entities = ev[log.key].unique().sort().to_list()
    raw = _states(store, log, store.prefix, entities)
    states = {e: prog.loads(h[b"s"]) if h else prog.new_state() for e, h in raw.items()}
    tail = ev.filter(pl.col(TS) >= log.until_us).sort(SEQ)  # what the stream worker ingests
    assert 0 < tail.height < ev.height
    for row in tail.select(*names, SEQ).iter_rows():
        event = dict(zip(names, row[:-1], strict=True))
        prog.ingest(states[event[log.key]], event, row[-1])
    t_end = int(ev[TS].max()) + 1
    got = [prog.query(states[e], t_end) for e in entities]
    queries = pl.DataFrame({log.key: entities, TS: [t_end] * len(entities)})
    _compare(log, prog, BatchProgram(log.view.ir).features(ev.lazy(), queries), got)


# -- (b) resumability ----------------------------------------------------------------------------
class Interrupted(Exception):
    pass


def _dump(s: Store, prefix: str) -> dict[bytes, dict[bytes, bytes]]:
    out = {}
    for k in s.client.scan_iter(match=f"{prefix}:*", count=1000):
        h = s.client.hgetall(k)
        h.pop(b"materialized_at", None)  # wall-clock time of the run: the one field that differs
        if k.endswith(b":generation"):  # an epoch's id is unique by design, and so is its time
            h.pop(b"id")
            h.pop(b"created_at")
        out[k[len(prefix) :]] = h
    return out


def test_resume_after_interruption(store: Store, log: Log) -> None:
    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 100:
            raise Interrupted

    layout = OnlineStoreLayout(store.prefix)
    with pytest.raises(Interrupted):
        materialize(
            log.view,
            log.until,
            store.client,
            path=log.path,
            prefix=store.prefix,
            batch_size=50,
            progress=stop_after_two_batches,
        )
    assert not store.client.exists(layout.meta_key(log.view))  # incomplete: no meta key
    progress = store.client.hgetall(layout.progress_key(log.view))
    assert progress[b"entities"] == b"100"
    assert progress[b"until"] == str(log.until_us).encode()
    assert len(store.all_keys()) == 102  # 100 states + the progress key + the generation

    calls: list[tuple[int, int]] = []
    resumed = materialize(
        log.view,
        log.until,
        store.client,
        path=log.path,
        prefix=store.prefix,
        batch_size=50,
        progress=lambda d, t: calls.append((d, t)),
    )
    other = store.new_prefix()
    fresh = materialize(
        log.view, log.until, store.client, path=log.path, prefix=other, batch_size=50
    )
    entities = sorted(
        read_events(log.view.source, path=log.path, end=log.until)[0]
        .select(log.key)
        .unique()
        .collect()[log.key]
        .to_list()
    )
    assert resumed.resumed_from == entities[99]
    assert calls[0] == (100, len(entities))  # the bar starts where the first run stopped
    assert calls[-1] == (len(entities), len(entities))
    assert resumed.batches == math.ceil((len(entities) - 100) / 50)
    assert (resumed.entities, resumed.events) == (fresh.entities, fresh.events)
    assert not store.client.exists(layout.progress_key(log.view))
    a, b = _dump(store, store.prefix), _dump(store, other)
    assert len(a) == len(entities) + 2  # states, meta, generation
    assert a == b  # byte-identical: every state, fingerprint and meta field


def test_other_until_starts_over_and_removes_stale_states(store: Store, log: Log) -> None:
    layout = OnlineStoreLayout(store.prefix)
    later = log.until + timedelta(days=3)
    full = materialize(log.view, later, store.client, path=log.path, prefix=store.prefix)

    def stop(done: int, total: int) -> None:
        if done >= 100:
            raise Interrupted

    with pytest.raises(Interrupted):  # interrupted run at yet another cut-over
        materialize(
            log.view,
            later + timedelta(days=1),
            store.client,
            path=log.path,
            prefix=store.prefix,
            batch_size=50,
            progress=stop,
        )
    early = datetime(2026, 1, 2, 12, tzinfo=UTC)
    report = materialize(log.view, early, store.client, path=log.path, prefix=store.prefix)
    assert report.resumed_from is None  # a different until starts over
    assert 0 < report.entities < full.entities
    assert report.stale_deleted == full.entities - report.entities  # users first seen later
    other = store.new_prefix()
    materialize(log.view, early, store.client, path=log.path, prefix=other)
    assert _dump(store, store.prefix) == _dump(store, other)
    meta = ViewMeta.from_hash(store.client.hgetall(layout.meta_key(log.view)))
    assert meta.materialized_until == to_epoch_us(early)
    assert meta.entities == report.entities


def test_large_amounts_serialize(store: Store, tmp_path: Path) -> None:
    """A $5,000 transaction must not make an entity's state unencodable: fixed-point x*x of a
    var/std input exceeds 64 bits and travels as a msgpack extension."""
    view = load_definitions(ROOT / "feature_defs").view("user_spend")
    df = generate_transactions(50, users=3, seed=1).with_columns(pl.lit(5000.0).alias("amount"))
    path = tmp_path / "big.parquet"
    df.write_parquet(path)
    until = datetime(2026, 3, 1, tzinfo=UTC)
    report = materialize(view, until, store.client, path=path, prefix=store.prefix)
    assert report.entities == 3


# -- (c) hash tags: one slot per entity --------------------------------------------------------
def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the function of the Redis Cluster spec."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _slot(key: str) -> int:
    raw = key.encode()
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return _crc16(raw) % 16384


ODD_ENTITIES: list[str | int] = [
    "u1", "{", "}", "{}", "a{b}c", "", "%", "%7B", "%257B", "中国", "Ísland", "x:y", 0, 42, -7,
]  # fmt: skip


def test_hash_tags_keep_an_entity_in_one_slot(store: Store, log: Log) -> None:
    assert _crc16(b"123456789") == 0x31C3  # the spec's test vector
    views = ["user_spend", "user_risk", "merchant_x", "v"]
    for prefix in ["fp", store.prefix]:
        for e in ODD_ENTITIES:
            keys = [state_key(v, e, prefix) for v in views]
            slots = {_slot(k) for k in keys}
            assert len(slots) == 1, (e, keys)
            assert slots == {_crc16(encode_entity(e).encode()) % 16384}
            assert {redis.crc.key_slot(k.encode()) for k in keys} == slots
            kind = int if isinstance(e, int) else str
            assert decode_entity(encode_entity(e), kind) == e
    texts = [encode_entity(e) for e in ODD_ENTITIES if isinstance(e, str)]
    assert len(set(texts)) == len(texts)  # injective
    assert all("{" not in t and "}" not in t and t for t in texts)
    assert state_key("user_spend", "u1") == "fp:{u1}:user_spend"
    assert meta_key("user_spend") == "fp:meta:user_spend"
    with pytest.raises(OnlineStoreError):
        encode_entity(1.5)  # type: ignore[arg-type]
    with pytest.raises(OnlineStoreError):
        OnlineStoreLayout("a{b")

    # the keys materialize actually wrote
    materialize(log.view, log.until, store.client, path=log.path, prefix=store.prefix)
    layout = OnlineStoreLayout(store.prefix)
    written = [k for k in store.all_keys() if layout.entity_text(k, log.view) is not None]
    assert len(written) > 250
    for k in written:
        text = layout.entity_text(k, log.view)
        assert text is not None
        assert _slot(k.decode()) == _crc16(text.encode()) % 16384
        assert _slot(k.decode()) == _slot(layout.state_key("another_view", decode_entity(text)))


# -- (d) the meta key records the cut-over -----------------------------------------------------
def test_meta_records_cutover(store: Store, log: Log) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    report = materialize(log.view, log.until, store.client, path=log.path, prefix=store.prefix)
    layout = OnlineStoreLayout(store.prefix)
    raw = store.client.hgetall(layout.meta_key(log.view))
    assert set(raw) == {
        b"fingerprint",
        b"materialized_until",
        b"cutover_basis",
        b"materialized_at",
        b"entities",
        b"events",
        b"source_files",
    }
    meta = ViewMeta.from_hash(raw)
    assert meta.fingerprint == log.view.fingerprint
    assert meta.materialized_until == log.until_us
    assert meta.cutover_basis == CUTOVER_EVENT_TIME
    assert datetime.fromisoformat(meta.materialized_at) >= before
    assert (meta.entities, meta.events) == (report.entities, report.events)
    [f] = meta.source_files
    assert f["path"] == str(log.path) and f["rows"] == report.events
    assert f["max_ts"] < log.until_us
    assert not store.client.exists(layout.progress_key(log.view))
    # every stored state ends before the cut-over: the stream owns ts >= until; the state bytes
    # are msgpack [horizon, max_ts, buffer, compacted, layout] (docs/online-store.md)
    decoder = msgspec.msgpack.Decoder(ext_hook=lambda code, data: None)
    for k in store.all_keys():
        if layout.entity_text(k, log.view) is not None:
            assert decoder.decode(store.client.hget(k, "s"))[1] < log.until_us


def test_cli_command(store: Store, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    code = materialize_command(
        ROOT / "feature_defs",
        log.until.replace(tzinfo=None).isoformat(),  # naive = UTC
        store.url,
        "user_spend",
        100,
        events=log.path,
        prefix=store.prefix,
    )
    out = capsys.readouterr().out
    assert code == 0, out
    meta = ViewMeta.from_hash(store.client.hgetall(meta_key("user_spend", store.prefix)))
    assert meta.materialized_until == log.until_us
    assert f"{meta.entities:,} entities" in out and "cut-over" in out
    assert parse_until("2026-01-15") == datetime(2026, 1, 15, tzinfo=UTC)
    assert parse_until("2026-01-15T01:00:00+01:00") == datetime(2026, 1, 15, tzinfo=UTC)
    assert parse_until("2026-01-15T00:00:00Z") == datetime(2026, 1, 15, tzinfo=UTC)


# -- (e) a wrong or unreachable URL is a clear error ------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_or_wrong_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()
    with pytest.raises(OnlineStoreError, match=f"cannot reach Redis at redis://127.0.0.1:{port}/0"):
        connect(f"redis://127.0.0.1:{port}/0", timeout=1.0)
    with pytest.raises(OnlineStoreError) as err:
        connect(f"redis://app:s3cret@127.0.0.1:{port}/0", timeout=1.0)
    assert "app:***@127.0.0.1" in str(err.value) and "s3cret" not in str(err.value)
    with pytest.raises(OnlineStoreError, match="not a Redis URL"):
        connect("http://127.0.0.1:6379")
    with pytest.raises(OnlineStoreError, match="not a Redis URL"):
        connect("127.0.0.1:6379")

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/3")
    assert resolve_url(None) == (f"redis://127.0.0.1:{port}/3", "$REDIS_URL")
    assert resolve_url("rediss://h:1/0")[0] == "rediss://h:1/0"
    with pytest.raises(OnlineStoreError, match=r"\$REDIS_URL"):
        connect(None, timeout=1.0)
    monkeypatch.delenv("REDIS_URL")
    import tempfile

    monkeypatch.chdir(tempfile.mkdtemp())  # no `featurepipe dev up` record here
    assert resolve_url(None) == ("redis://127.0.0.1:6379/0", "default")

    code = materialize_command(
        ROOT / "feature_defs", "2026-01-15", f"redis://127.0.0.1:{port}/0", None, 100
    )
    out = capsys.readouterr().out
    assert code == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and f"127.0.0.1:{port}" in lines[0]
    assert materialize_command(ROOT / "feature_defs", "yesterday", None, None, 100) == 2
    assert "ISO-8601" in capsys.readouterr().out
    assert materialize_command(ROOT / "feature_defs", "2026-01-15", None, "nope", 100) == 2
    assert "no view 'nope'" in capsys.readouterr().out


def test_wrong_password_is_clear(store: Store) -> None:
    host_port = store.url.split("://", 1)[1].rsplit("@", 1)[-1]
    with pytest.raises(OnlineStoreError) as err:
        connect(f"redis://nobody-{store.prefix}:p4ss-zz9@{host_port}", timeout=2.0)
    assert "***" in str(err.value) and "p4ss-zz9" not in str(err.value)
