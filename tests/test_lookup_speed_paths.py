"""The fast online lookup against the straightforward one, on a real Redis-protocol server.

``OnlineReader._read`` reads every (view, entity) once, in one transaction, and
assembles rows from per-entity answers; ``OnlineReader._read_one_by_one`` is the reference it
replaced: one pipelined HMGET per state, then each entity decoded, queried and copied into its
rows. On generated states (every aggregation kind, nulls, NaN, infinities, -0.0, huge integers,
late and tied events, empty and populated windows, entities found and absent, repeated in a
request) the two must give the same rows value for value, floats compared bit for bit, and
refuse the same requests with the same error.
"""

from __future__ import annotations

import math
import random
import struct
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import redis
from pydantic import BaseModel

import featurepipe as fp
from featurepipe.compile.python_state import ViewProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.errors import DataError, StateError
from featurepipe.ir.timebase import to_epoch_us
from featurepipe.online import state_store as state_store_module
from featurepipe.online.lookup import (
    DEFAULT_CACHE_BYTES,
    OnlineReader,
    UnservableEntityError,
    VersionMismatchError,
    answer_span,
    query_windows,
)
from featurepipe.online.state_store import (
    MaterializeProgress,
    StateStore,
    StateWrite,
    StoreIdentityError,
    StoreNotInitializedError,
)

if TYPE_CHECKING:
    from redis_server import Store

pytest_plugins = ["redis_server"]  # fixtures redis_url, store


class Ev(BaseModel):
    k: str
    n: int | None
    x: float | None
    s: str | None
    b: bool | None
    ts: datetime


BASE = datetime(2026, 3, 1, tzinfo=UTC)
HOUR = 3_600_000_000
source = fp.Source("lookup_evs", schema=Ev, timestamp="ts")
by_k = fp.Entity("thing", key="k")
by_n = fp.Entity("number", key="n")


def _outputs(tag: str) -> Callable[[Any], dict[str, Any]]:
    """Every aggregation kind over floats, ints, strings and datetimes, windowed and lifetime,
    with ``where`` and defaults, and derived features; names prefixed by ``tag``."""

    def outputs(t: Any) -> dict[str, Any]:
        x0 = t.x.fill_null(0.0)
        out = {
            "c_1h": fp.count(window="1h"),
            "c_x_1d": fp.count(t.x, window="1d"),
            "c_all": fp.count(),
            "sum_x_2h": fp.sum(t.x, window="2h"),
            "sum_x0_1d": fp.sum(x0, window="1d", default=0.0),
            "sum_n_all": fp.sum(t.n),
            "sum_b_1d": fp.sum(x0, window="1d", where=t.b, default=-0.0),
            "mean_x_1d": fp.mean(t.x, window="1d"),
            "mean_n_2h": fp.mean(t.n, window="2h"),
            "var_x_1d": fp.var(t.x, window="1d"),
            "std_n_all": fp.std(t.n),
            "min_x_2h": fp.min(t.x, window="2h"),
            "max_x_all": fp.max(t.x),
            "max_ts_1d": fp.max(t.ts, window="1d"),
            "first_s_all": fp.first(t.s),
            "last_s_2h": fp.last(t.s, window="2h", default="none"),
            "last_x_all": fp.last(t.x),
            "cd_s_1d": fp.count_distinct(t.s, window="1d"),
            "cd_x_all": fp.count_distinct(t.x),
            "burst": fp.feature(f"{tag}_c_1h") / (fp.feature(f"{tag}_c_all") + 1),
            "avg_1d": fp.when(fp.feature(f"{tag}_c_x_1d") > 0)
            .then(fp.feature(f"{tag}_sum_x0_1d") / fp.feature(f"{tag}_c_x_1d"))
            .otherwise(None),
        }
        return {f"{tag}_{k}": v for k, v in out.items()}

    return outputs


def _view(name: str, entity: fp.Entity, tag: str) -> FeatureView:
    return fp.feature_view(entity=entity, source=source, name=name, lateness="1h")(_outputs(tag))


VIEW_K = _view("look_k", by_k, "k")
VIEW_K2 = fp.feature_view(entity=by_k, source=source, name="look_k2", lateness="30m")(
    lambda t: {"k2_count_1h": fp.count(window="1h"), "k2_last_x": fp.last(t.x)}
)
VIEW_N = _view("look_n", by_n, "n")
VIEWS = [VIEW_K, VIEW_K2, VIEW_N]

FLOATS = [0.0, -0.0, 0.1, -2.5, 1e300, -1e300, 5e-324, math.inf, -math.inf, math.nan, 4.5e15,
          1e16, 2.0**52, 123.456]  # fmt: skip
INTS = [0, 1, -1, 7, 2**62, -(2**62), 2**63 - 1, -(2**63), 1000]


def _events(rng: random.Random, entity: Any, end: datetime) -> list[dict[str, Any]]:
    """0-40 events in arrival order over the 3 days before ``end``: ties, late arrivals,
    every null, and a few events far behind the others (folded into lifetime accumulators)."""
    out = []
    for _ in range(rng.choice([0, 1, 2, 5, 12, 40])):
        ts = end - timedelta(seconds=rng.choice([rng.randrange(3 * 86400), 60, 3600, 7200]))
        x = rng.random() * 1000 - 500 if rng.random() < 0.5 else rng.choice([None, *FLOATS])
        out.append(
            {
                "k": entity if isinstance(entity, str) else f"k{entity}",
                "n": entity if isinstance(entity, int) else rng.choice([None, *INTS]),
                "x": x,
                "s": rng.choice([None, "", "a", "b", "ß", "中国", "US"]),
                "b": rng.choice([None, True, False]),
                "ts": ts,
            }
        )
    return out


class Fixture:
    """States of generated events for every view under one prefix, and requests over them."""

    def __init__(self, store: Store, seed: int) -> None:
        self.client = store.client
        self.prefix = store.prefix
        self.rng = random.Random(seed)
        self.end = BASE + timedelta(days=3)
        self.state = StateStore(self.client, self.prefix)
        self.state.create_generation("materialize", {v.name: v.fingerprint for v in VIEWS})
        self.strs = [f"e{i}" for i in range(120)] + ["", "a{b}", "100%", "ü"]
        self.ints = [i * 7919 - 300_000 for i in range(60)] + [0, 2**63 - 1, -(2**63)]
        self.max_ts: dict[tuple[str, Any], int] = {}
        writes: list[StateWrite] = []
        for view, pool in ((VIEW_K, self.strs), (VIEW_K2, self.strs), (VIEW_N, self.ints)):
            prog = ViewProgram(view.ir)
            for e in pool:
                if self.rng.random() < 0.25:
                    continue  # never written: not found
                state = prog.new_state()
                for seq, ev in enumerate(_events(self.rng, e, self.end)):
                    prog.ingest(state, {**ev, "ts": to_epoch_us(ev["ts"])}, seq)
                self.max_ts[(view.name, e)] = state.max_ts
                writes.append(StateWrite(view.name, e, prog.dumps(state), view.fingerprint))
        assert self.state.commit("tests", writes, {}, {})

    def reader(self, **kwargs: Any) -> OnlineReader:
        return OnlineReader(self.client, VIEWS, self.prefix, **kwargs)

    def column(self, pool: list[Any], size: int) -> list[Any]:
        """Request values: known and unknown entities, repeated ones too."""
        unknown = ["zz", "nobody"] if isinstance(pool[0], str) else [42, -1]
        return [self.rng.choice([*pool, *unknown]) for _ in range(size)]

    def times(self) -> list[int]:
        """Request times: the end, window edges around events, later and (refused) earlier."""
        end = to_epoch_us(self.end)
        recent = sorted(self.max_ts.values())[-5:]
        return [
            end,
            end + 1,
            end + 30 * 60_000_000,
            end + 2 * HOUR,
            end + 25 * HOUR,
            end + 10 * 86_400_000_000,
            *(ts + d for ts in recent for d in (0, 1, HOUR, 2 * HOUR, -HOUR + 1)),
            end - 3 * HOUR,  # further behind than the lateness: refused for most entities
        ]


@pytest.fixture
def data(store: Store) -> Fixture:
    return Fixture(store, seed=20261129)


def _bits(v: Any) -> Any:
    """A value as comparable data: floats by their IEEE bit pattern (NaN, -0.0 included)."""
    if isinstance(v, float):
        return ("float", struct.pack(">d", v))
    return (type(v).__name__, v)


def _canon(rows: list[dict[str, Any]]) -> list[list[tuple[str, Any]]]:
    return [[(k, _bits(v)) for k, v in row.items()] for row in rows]


def _outcome(call: Callable[[], list[dict[str, Any]]]) -> Any:
    try:
        return ("rows", _canon(call()))
    except Exception as e:  # the same refusal, class and message, on both paths
        return ("raised", type(e).__name__, str(e))


def _both(
    reader: OnlineReader,
    keys: dict[str, list[Any]],
    wanted: dict[str, list[str]],
    at_us: int | None,
    fingerprints: dict[str, str] | None = None,
) -> tuple[Any, Any]:
    """(fast, reference) outcomes of one request."""
    columns = reader.check_keys(keys, wanted)
    per_view = {name: columns[reader.views[name].entity.key] for name in wanted}
    n = len(next(iter(keys.values())))
    fast = _outcome(lambda: reader.read_keyed(keys, wanted, at_us=at_us, fingerprints=fingerprints))
    slow = _outcome(lambda: reader._read_one_by_one(per_view, n, wanted, at_us, fingerprints))
    return fast, slow


def _requests(
    data: Fixture, rounds: int
) -> Iterator[tuple[dict[str, list[Any]], dict[str, list[str]]]]:
    rng = data.rng
    names_k = VIEW_K.feature_names
    for i in range(rounds):
        size = rng.choice([1, 1, 2, 7, 50, 130])
        shape = i % 4
        if shape == 0:  # one view, every feature
            yield {"k": data.column(data.strs, size)}, {"look_k": list(names_k)}
        elif shape == 1:  # a few features, shuffled
            feats = rng.sample(list(VIEW_N.feature_names), rng.randint(1, 6))
            yield {"n": data.column(data.ints, size)}, {"look_n": feats}
        elif shape == 2:  # two views of one key
            yield (
                {"k": data.column(data.strs, size)},
                {"look_k2": ["k2_last_x"], "look_k": rng.sample(list(names_k), 4)},
            )
        else:  # views of two keys, row by row
            yield (
                {"n": data.column(data.ints, size), "k": data.column(data.strs, size)},
                {
                    "look_k": ["k_c_all", "k_max_x_all", "k_last_s_2h"],
                    "look_n": list(VIEW_N.feature_names),
                },
            )


@pytest.mark.parametrize("cache_bytes", [DEFAULT_CACHE_BYTES, 0, 20_000])
def test_fast_path_equals_the_reference(data: Fixture, cache_bytes: int) -> None:
    """Many requests at moving request times: answers reused from the cache (the default
    budget), none kept (0), or a budget so small that answers keep being dropped."""
    reader = data.reader(cache_bytes=cache_bytes)
    times = data.times()
    outcomes: dict[str, int] = {}
    for i, (keys, wanted) in enumerate(_requests(data, 160)):
        at_us = times[i % len(times)]
        fast, slow = _both(reader, keys, wanted, at_us)
        assert fast == slow, (keys, wanted, at_us)
        kind = fast[0] if fast[0] == "rows" else fast[1]
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert reader.store.transaction_reads  # the transaction served every read
    # answers and lateness refusals alike, nothing else refused
    assert set(outcomes) == {"rows", StateError.__name__}, outcomes
    assert outcomes["rows"] > 100 and outcomes[StateError.__name__] >= 3, outcomes
    found = reader.read(data.strs, {"look_k": ["k_c_all"]}, at_us=times[0])
    assert {r["look_k_found"] for r in found} == {True, False}
    if reader.cache is not None:
        assert 0 < reader.cache.used <= cache_bytes


def test_answer_span(data: Fixture) -> None:
    """Within the span ``answer_span`` gives, the query answers exactly as at the time it was
    computed for; the cache rests on this."""
    prog = ViewProgram(VIEW_K.ir)
    windows = query_windows(prog)
    assert windows == ((HOUR, 1), (2 * HOUR, 1), (24 * HOUR, 1))
    _check_answer_span(prog, windows, data)


VIEW_HOPPED = fp.feature_view(entity=by_k, source=source, name="look_hop", lateness="1h")(
    lambda t: {
        "h_c_2h": fp.count(window="2h", hop="30m"),
        "h_sum_1d": fp.sum(t.x, window="1d", hop="1h"),
        "h_cd_1d": fp.count_distinct(t.s, window="1d", hop="6h"),
        "h_last_3h": fp.last(t.s, window="3h", hop="1h"),
        "h_c_1h": fp.count(window="1h"),
    }
)


def test_answer_span_of_hopped_windows(data: Fixture) -> None:
    prog = ViewProgram(VIEW_HOPPED.ir)
    windows = query_windows(prog)
    assert windows == ((HOUR, 1), (2 * HOUR, HOUR // 2), (3 * HOUR, HOUR), (24 * HOUR, HOUR),
                       (24 * HOUR, 6 * HOUR))  # fmt: skip
    _check_answer_span(prog, windows, data)


def _check_answer_span(prog: ViewProgram, windows: Any, data: Fixture) -> None:
    rng = data.rng
    end = to_epoch_us(data.end)
    checked = 0
    for _ in range(300):
        state = prog.new_state()
        for seq, ev in enumerate(_events(rng, "e", data.end)):
            prog.ingest(state, {**ev, "ts": to_epoch_us(ev["ts"])}, seq)
        events = [rec[0] for rec in state.buffer]
        t = rng.choice([end, end + rng.randrange(3 * 86400) * 1_000_000, *events[-3:]])
        t += rng.choice([0, 1, -1, HOUR, 2 * HOUR])
        try:
            expected = _canon([dict(enumerate(prog.query(state, t)))])
        except StateError:
            continue
        after, until = answer_span(state, t, windows, prog.lateness)
        assert after < t <= until
        low = max(after + 1, t - 30 * 86_400_000_000)
        high = min(until, t + 30 * 86_400_000_000)
        for at in {low, high, rng.randint(low, high), t}:
            assert _canon([dict(enumerate(prog.query(state, at)))]) == expected, (t, at)
        checked += 1
    assert checked > 200


def test_a_request_split_over_several_transactions(
    data: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_store_module, "_READ_CHUNK", 7)
    reader = data.reader()
    keys = {"n": data.column(data.ints, 90), "k": data.column(data.strs, 90)}
    wanted = {"look_k": list(VIEW_K.feature_names), "look_n": ["n_sum_n_all", "n_std_n_all"]}
    fast, slow = _both(reader, keys, wanted, to_epoch_us(data.end) + HOUR)
    assert fast == slow and fast[0] == "rows"

    # the store re-materialized between two parts of one lookup: refused, never mixed
    run = StateStore._run_read_transaction
    calls = []

    def run_then_renew(self: StateStore, head: Any, keys: Any) -> list[Any]:
        out = run(self, head, keys)
        calls.append(len(keys))
        if len(calls) == 2:
            data.state.new_generation("materialize", {VIEW_K.name: VIEW_K.fingerprint})
        return out

    monkeypatch.setattr(StateStore, "_run_read_transaction", run_then_renew)
    with pytest.raises(StoreIdentityError, match="re-materialized"):
        reader.read_keyed(keys, wanted, at_us=to_epoch_us(data.end))
    assert len(calls) == 3 and calls[:2] == [7, 7]


def test_a_server_refusing_transactions_is_read_with_the_pipeline(
    data: Fixture, store: Store
) -> None:
    """A Redis user whose ACL refuses MULTI (the read transaction): the reader's answers are
    the pipeline's, and later reads go straight to it."""
    with store.user_without("nomulti", "multi") as limited:
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.execute_command("MULTI")
        keys, wanted = {"k": data.column(data.strs, 40)}, {"look_k": list(VIEW_K.feature_names)}
        at_us = to_epoch_us(data.end)
        expected = data.reader().read_keyed(keys, wanted, at_us=at_us)
        reader = OnlineReader(limited, VIEWS, data.prefix)
        fast, slow = _both(reader, keys, wanted, at_us)
        assert fast == slow == ("rows", _canon(expected))
        assert not reader.store.transaction_reads  # for good: no second failed attempt


def test_a_state_key_of_another_type_raises_as_the_pipeline_does(data: Fixture) -> None:
    """A key of the wrong type among the states read: the server's WRONGTYPE error, as the
    pipeline raises it; transactions stay on and the connection answers the next read."""
    reader = data.reader()
    store = reader.store
    keys, wanted = {"k": ["e1", "e2", "broken", "e3"]}, {"look_k": ["k_c_all"]}
    at_us = to_epoch_us(data.end)
    good = reader.read_keyed({"k": ["e1", "e2", "e3"]}, wanted, at_us=at_us)
    data.client.set(store.layout.state_key(VIEW_K, "broken"), "not a hash")
    fast, slow = _both(reader, keys, wanted, at_us)
    assert fast == slow and fast[:2] == ("raised", "ResponseError")
    assert "WRONGTYPE" in fast[2]
    assert store.transaction_reads
    assert reader.read_keyed({"k": ["e1", "e2", "e3"]}, wanted, at_us=at_us) == good


def test_a_lost_connection_is_read_again(data: Fixture, store: Store) -> None:
    """The reader's connection killed by the server between two reads (a restart, a proxy's
    idle timeout): the next read answers, through a new connection."""
    client = redis.Redis.from_url(store.url)  # the reader's own pool
    reader = OnlineReader(client, VIEWS, data.prefix, cache_bytes=0)
    keys, wanted = {"k": data.column(data.strs, 30)}, {"look_k": list(VIEW_K.feature_names)}
    at_us = to_epoch_us(data.end)
    before = _canon(reader.read_keyed(keys, wanted, at_us=at_us))
    name = f"fp-reader-{data.prefix[-8:]}"
    client.client_setname(name)  # the pooled connection (the only one) the reads use
    mine = [c for c in data.client.client_list() if c.get("name") == name]
    assert len(mine) == 1
    data.client.client_kill_filter(_id=mine[0]["id"])
    assert _canon(reader.read_keyed(keys, wanted, at_us=at_us)) == before
    assert reader.store.transaction_reads
    client.close()


def test_a_connection_lost_mid_reply_is_read_again_through_the_pipeline(
    data: Fixture, store: Store
) -> None:
    """The connection fails while the transaction's replies are read (its third reply, as a
    reset socket would): the request is answered through the pipeline, which reconnects;
    transactions stay on and the next read uses them again."""

    class Breaking(redis.Connection):
        reads = 0
        broken = False

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            cls = type(self)
            cls.reads += 1
            if cls.reads == 3 and not cls.broken:
                cls.broken = True
                self.disconnect()
                raise redis.exceptions.ConnectionError("Connection reset by peer (injected)")
            return super().read_response(*args, **kwargs)

    client = redis.Redis.from_url(store.url, connection_class=Breaking)
    reader = OnlineReader(client, VIEWS, data.prefix, cache_bytes=0)
    keys, wanted = {"k": data.column(data.strs, 30)}, {"look_k": list(VIEW_K.feature_names)}
    at_us = to_epoch_us(data.end)
    expected = _canon(data.reader(cache_bytes=0).read_keyed(keys, wanted, at_us=at_us))
    Breaking.reads = 0
    assert _canon(reader.read_keyed(keys, wanted, at_us=at_us)) == expected
    assert Breaking.broken and reader.store.transaction_reads
    assert _canon(reader.read_keyed(keys, wanted, at_us=at_us)) == expected
    client.close()


def test_a_single_connection_client_shared_by_threads(data: Fixture, store: Store) -> None:
    """A single-connection client's one socket, used by lookups on several threads at once:
    each read holds the client's lock for its whole transaction, so no thread reads another's
    replies (which would answer with another entity's state, or fail)."""
    client = redis.Redis.from_url(store.url, single_connection_client=True)
    reader = OnlineReader(client, VIEWS, data.prefix, cache_bytes=0)
    at_us = to_epoch_us(data.end)
    wanted = {"look_k": ["k_c_all", "k_sum_n_all", "k_last_x_all"]}
    requests = [data.column(data.strs, data.rng.randint(1, 12)) for _ in range(40)]
    expected = [_canon(reader.read_keyed({"k": ks}, wanted, at_us=at_us)) for ks in requests]
    wrong: list[Any] = []

    def work(offset: int) -> None:
        for i in range(150):
            j = (i + offset) % len(requests)
            try:
                got = _canon(reader.read_keyed({"k": requests[j]}, wanted, at_us=at_us))
            except Exception as e:  # counted as a wrong answer
                wrong.append(e)
                continue
            if got != expected[j]:
                wrong.append(j)
            client.ping()  # another command on the same socket between reads

    threads = [threading.Thread(target=work, args=(n * 13,)) for n in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert wrong == []
    assert reader.store.transaction_reads
    client.close()


def test_a_client_with_another_encoding_reads_its_own_states(store: Store) -> None:
    """A client set to encode text as UTF-16: key and field names go to the server as its
    packer puts them there (hiredis's packer, redis-py's default where hiredis is installed,
    sends UTF-8 whatever the encoding), as the client wrote them, so the transaction finds
    what the pipeline finds."""
    client = redis.Redis.from_url(store.url, encoding="utf-16")
    s = StateStore(client, store.new_prefix())
    s.create_generation("materialize", {"v": "fp1"})
    assert s.commit("tests", [StateWrite("v", "ü", b"state", "fp1")], {}, {})
    wanted = [("v", "ü"), ("v", "absent")]
    assert s.fetch_states_in_generation(wanted) == s.read_states_in_generation(wanted)
    assert s.fetch_states_in_generation(wanted)[0] is not None and s.transaction_reads
    client.close()


def test_a_connection_that_is_not_a_plain_one_gets_the_pipeline() -> None:
    """``_transact`` sends nothing on a connection it cannot drive (client-side caching
    wraps redis-py's connections in a proxy) and gives it back."""
    released: list[Any] = []
    proxy = object()
    with pytest.raises(state_store_module._NoTransaction):
        state_store_module._transact(proxy, b"", 3, released.append)
    assert released == [proxy]


def test_the_packed_transaction_is_redis_py_s_packing_of_the_same_commands() -> None:
    """``_read_transaction``'s bytes against redis-py's own packer (an independent encoder of
    the protocol), on keys with braces, spaces, unicode, CR/LF and the empty string."""
    from redis.connection import Connection

    from featurepipe.online.layout import STATE_FIELDS

    conn = Connection()
    rng = random.Random(7)
    alphabet = ["a", "{", "}", " ", "ü", "中", "\r", "\n", "$", "*", "0"]
    for _ in range(200):

        def key() -> bytes:
            return "".join(rng.choices(alphabet, k=rng.randint(0, 12))).encode()

        gen, progress = key(), [key() for _ in range(rng.randint(0, 3))]
        states = [key() for _ in range(rng.randint(0, 20))]
        commands = [
            ("MULTI",),
            ("HGET", gen, "id"),
            *(("EXISTS", k) for k in progress),
            *(("HMGET", k, *STATE_FIELDS) for k in states),
            ("EXEC",),
        ]
        expected = b"".join(conn.pack_commands(commands))
        fields = [f.encode() for f in STATE_FIELDS]
        packed = state_store_module._read_transaction(gen, b"id", progress, states, fields)
        assert packed == expected


def test_every_refusal_is_kept(data: Fixture) -> None:
    at_us = to_epoch_us(data.end) + 1
    keys = {"k": ["e1", "e2", "e3", "nobody", "e1"]}
    wanted = {"look_k": ["k_c_all", "k_sum_x_2h"]}
    reader = data.reader()
    fast, slow = _both(reader, keys, wanted, at_us)
    assert fast == slow and fast[0] == "rows"

    # a pinned version that is not served
    fast, slow = _both(reader, keys, wanted, at_us, {"look_k": "not-this-one"})
    assert fast == slow and fast[1] == VersionMismatchError.__name__
    # a feature the view does not have
    fast, slow = _both(reader, keys, {"look_k": ["k_c_all", "n_c_all"]}, at_us)
    assert fast == slow and fast[1] == DataError.__name__ and "'n_c_all'" in fast[2]
    # a pin of a view not requested
    fast, slow = _both(reader, keys, wanted, at_us, {"look_n": VIEW_N.fingerprint})
    assert fast == slow and fast[0] == "raised"
    # a pinned generation that is not the store's
    fast, slow = _both(data.reader(generation="another"), keys, wanted, at_us)
    assert fast == slow and fast[1] == StoreIdentityError.__name__
    # lateness: further behind the entity's newest event than the view's lateness
    entity, newest = next((e, ts) for (v, e), ts in data.max_ts.items() if v == "look_k" and ts > 0)
    fast, slow = _both(reader, {"k": ["nobody", entity]}, wanted, newest - HOUR - 1)
    assert fast == slow and fast[1] == StateError.__name__
    fast, slow = _both(reader, {"k": ["nobody", entity]}, wanted, newest - HOUR)
    assert fast == slow and fast[0] == "rows"  # exactly the lateness behind: answered

    state = data.state
    other = StateWrite("look_k", "e2", b"\x94\x00\x00\x90\x90", "another-version")
    quarantined = StateWrite("look_k", "e3", b"", VIEW_K.fingerprint, quarantine="state too large")
    corrupt = StateWrite("look_k", "e4", b"\xc1 not msgpack", VIEW_K.fingerprint)
    assert state.commit("tests", [other, quarantined, corrupt], {}, {})
    for entity, error in (
        ("e2", VersionMismatchError),
        ("e3", UnservableEntityError),
        ("e4", UnservableEntityError),
    ):
        fast, slow = _both(reader, {"k": ["nobody", entity]}, wanted, at_us)
        assert fast == slow and fast[1] == error.__name__, (entity, fast)
    # a neighbour of refused entities is still served, identically
    fast, slow = _both(reader, {"k": ["e1", "e5"]}, wanted, at_us)
    assert fast == slow and fast[0] == "rows"

    # a materialization running (or interrupted): its view's entities are not all written
    state.start_materialization("look_k", MaterializeProgress("run", at_us, "fp", None, 0, 0))
    fast, slow = _both(reader, keys, wanted, at_us)
    assert fast == slow and fast[1] == StoreIdentityError.__name__
    fast, slow = _both(reader, {"n": [0]}, {"look_n": ["n_c_all"]}, at_us)
    assert fast == slow and fast[0] == "rows"  # another view is unaffected

    # an emptied store: no generation
    data.state.clear()
    fast, slow = _both(reader, {"n": [0]}, {"look_n": ["n_c_all"]}, at_us)
    assert fast == slow and fast[1] == StoreNotInitializedError.__name__


def test_states_rewritten_between_reads(data: Fixture) -> None:
    """A reader sees each state as stored at the time of the read (nothing kept between)."""
    reader = data.reader()
    prog = ViewProgram(VIEW_K.ir)
    keys, wanted = {"k": ["e7", "e8", "e7"]}, {"look_k": list(VIEW_K.feature_names)}
    at_us = to_epoch_us(data.end) + HOUR
    for step in range(4):
        state = prog.new_state()
        for seq, ev in enumerate(_events(data.rng, "e7", data.end)):
            prog.ingest(state, {**ev, "ts": to_epoch_us(ev["ts"])}, seq)
        assert data.state.commit(
            "tests", [StateWrite("look_k", "e7", prog.dumps(state), VIEW_K.fingerprint)], {}, {}
        )
        fast, slow = _both(reader, keys, wanted, at_us + step)
        assert fast == slow


def test_a_cached_answer_never_skips_the_lateness_check(data: Fixture) -> None:
    """Answered at exactly the lateness behind the newest event, then asked 1 us earlier (no
    window changes in between): refused, as the reference refuses it."""
    prog = ViewProgram(VIEW_K.ir)
    state = prog.new_state()
    base = to_epoch_us(data.end)
    for seq, ts in enumerate([base, base + 3 * HOUR]):
        event = {"k": "gap", "n": 1, "x": 1.5, "s": "a", "b": True, "ts": ts}
        prog.ingest(state, event, seq)
    assert data.state.commit(
        "tests", [StateWrite("look_k", "gap", prog.dumps(state), VIEW_K.fingerprint)], {}, {}
    )
    reader = data.reader()
    keys, wanted = {"k": ["gap"]}, {"look_k": list(VIEW_K.feature_names)}
    answered = base + 2 * HOUR  # newest event - lateness
    for at_us, outcome in ((answered, "rows"), (answered - 1, "raised"), (answered, "rows")):
        fast, slow = _both(reader, keys, wanted, at_us)
        assert fast == slow and fast[0] == outcome, at_us
    assert len(reader.cache or ()) == 1
