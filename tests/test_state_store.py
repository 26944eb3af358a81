"""The state store is the one owner of the online store's keys: its API against a real Redis,
and a scan of the package proving that no other module spells a key or talks to Redis keys."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from featurepipe.online.layout import MaterializeProgress, ViewMeta
from featurepipe.online.state_store import StateStore, StateWrite, StoredState

if TYPE_CHECKING:
    from redis_server import Store

pytest_plugins = ["redis_server"]  # fixtures redis_url, store

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "featurepipe"
OWNERS = {
    "featurepipe/online/state_store.py",
    "featurepipe/online/cluster_store.py",  # the same store on a Redis Cluster
    "featurepipe/online/layout.py",
}
# still to move onto StateStore.clear(): the demo deletes its scratch prefix itself
PENDING = {"featurepipe/dev/demo.py"}

# Redis commands that take keys or hash fields (names no other library here uses for a
# method: not exists/unlink/keys, which paths and dicts have); only the owners issue them
KEY_COMMANDS = {
    "hget", "hmget", "hset", "hgetall", "hdel", "hexists", "hkeys", "hvals", "hscan",
    "scan_iter", "watch", "mget", "mset",
}  # fmt: skip
KEY_FRAGMENTS = (":offsets:", ":meta:", ":materialize")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (prose may name keys)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _key_spellings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstrings(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if any(f in node.value for f in KEY_FRAGMENTS):
                found.append(f"{where}: key text {node.value!r}")
        elif isinstance(node, ast.JoinedStr):
            # f"{prefix}:..." or f"...:{{{entity}}}:...": a key built by hand
            parts = node.values
            for a, b in itertools.pairwise(parts):
                if (
                    isinstance(a, ast.FormattedValue)
                    and "prefix" in ast.unparse(a.value).lower()
                    and isinstance(b, ast.Constant)
                    and str(b.value).startswith(":")
                ):
                    found.append(f"{where}: prefix formatting {ast.unparse(node)}")
            if any(isinstance(p, ast.Constant) and ":{" in str(p.value) for p in parts):
                found.append(f"{where}: hash tag {ast.unparse(node)}")
        elif isinstance(node, ast.List | ast.Tuple | ast.Set):
            texts = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if len(texts) == len(node.elts) and {"s", "f"} <= set(texts):
                found.append(f"{where}: state hash fields {ast.unparse(node)}")
        elif isinstance(node, ast.Dict):
            texts = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if {"s", "f"} <= texts:
                found.append(f"{where}: state hash fields {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in KEY_COMMANDS
        ):
            found.append(f"{where}: Redis {node.func.attr}()")
    return found


def test_no_key_is_spelled_outside_the_state_store() -> None:
    found: list[str] = []
    owners_found: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        spellings = _key_spellings(path)
        if rel in OWNERS:
            owners_found += spellings
        elif rel not in PENDING:
            found += spellings
    assert not found, "\n".join(found)
    # the scan recognises the owners' spellings: it is not blind
    joined = "\n".join(owners_found)
    for kind in ("key text", "prefix formatting", "hash tag", "Redis hmget", "Redis watch"):
        assert kind in joined, kind


def test_states_offsets_and_the_compare_and_set_commit(store: Store) -> None:
    s = StateStore(store.client, store.prefix)
    assert s.read_states([("v", "u1"), ("v", 7)]) == [None, None]
    assert s.read_offsets("g") == {}

    first = [StateWrite("v", "u1", b"one", "fp1"), StateWrite("v", 7, b"seven", "fp1")]
    assert s.commit("g", first, {("t", 0): 10, ("t", 1): 4}, expected={("t", 0): 0})
    assert s.read_states([("v", "u1"), ("v", 7), ("w", "u1")]) == [
        StoredState(b"one", "fp1"),
        StoredState(b"seven", "fp1"),
        None,
    ]
    assert s.read_offsets("g") == {("t", 0): 10, ("t", 1): 4}
    assert s.read_offsets("other") == {}

    # a worker whose batch started at offset 5 lost the partition: nothing is written
    stale = [StateWrite("v", "u1", b"stale", "fp1")]
    assert not s.commit("g", stale, {("t", 0): 12}, expected={("t", 0): 5})
    assert s.read_states([("v", "u1")]) == [StoredState(b"one", "fp1")]
    assert s.read_offsets("g")[("t", 0)] == 10
    # the owner continues where the stored offset says
    assert s.commit("g", [StateWrite("v", "u1", b"two", "fp1")], {("t", 0): 12}, {("t", 0): 10})
    assert s.read_states([("v", "u1")]) == [StoredState(b"two", "fp1")]

    # the byte layout existing data has (docs/online-store.md)
    p = store.prefix
    assert store.client.hgetall(f"{p}:{{u1}}:v") == {b"s": b"two", b"f": b"fp1"}
    assert store.client.hgetall(f"{p}:offsets:g") == {b"t:0": b"12", b"t:1": b"4"}


def test_materialization_records(store: Store) -> None:
    s = StateStore(store.client, store.prefix)
    assert s.read_meta("v") is None and s.read_progress("v") is None
    s.commit("g", [], {("t", 0): 3}, {})
    s.commit("h", [], {("t", 0): 5}, {})
    progress = MaterializeProgress("run1", 1_000, "fp1", None, 0, 0)
    s.start_materialization("v", progress)
    assert s.read_progress("v") == progress
    assert s.read_offsets("g") == {} and s.read_offsets("h") == {}  # workers start over

    done = MaterializeProgress("run1", 1_000, "fp1", "u2", 2, 5)
    s.write_states_with_progress("v", "fp1", [("u1", b"a"), ("u2", b"b"), ("u3", b"c")], done)
    assert s.read_progress("v") == done
    assert s.delete_states_except("v", ["u1", "u3"]) == 1
    assert s.read_states([("v", "u1"), ("v", "u2")]) == [StoredState(b"a", "fp1"), None]

    meta = ViewMeta("fp1", 1_000, "event_time", "2026-01-01T00:00:00+00:00", 2, 5, [])
    s.finish_materialization("v", meta)
    assert s.read_meta("v") == meta and s.read_progress("v") is None
    assert sorted(store.client.scan_iter(match=f"{store.prefix}:meta:*")) == [
        f"{store.prefix}:meta:v".encode()
    ]


def test_clear_deletes_only_its_prefix(store: Store) -> None:
    a = StateStore(store.client, store.prefix)
    b = StateStore(store.client, store.new_prefix())  # "<prefix>-xxxx": shares a's text
    for s in (a, b):
        s.commit("g", [StateWrite("v", "u1", b"x", "fp")], {("t", 0): 1}, {})
    assert a.clear() == 2
    assert a.read_states([("v", "u1")]) == [None] and a.read_offsets("g") == {}
    assert b.read_states([("v", "u1")]) == [StoredState(b"x", "fp")]


def test_materialize_writes_by_script_as_the_pipeline_writes(store: Store) -> None:
    """``write_states_with_progress`` writes with one script call per 1,000 states: each hash
    then holds what the pipeline's HDEL + HSET leave (a quarantine lifted, the state and the
    fingerprint set, other fields kept), over more states than one call takes."""
    states = [(f"u{i}", f"state {i}".encode()) for i in range(2_345)]
    done = MaterializeProgress("run1", 1_000, "fp2", "u2344", 2_345, 9)
    written = {}
    for prefix, scripted in ((store.prefix, True), (store.new_prefix(), False)):
        s = StateStore(store.client, prefix)
        for entity in ("u7", "u1500"):  # quarantined entities, with an unrelated field
            key = s.layout.state_key("v", entity)
            store.client.hset(key, mapping={"q": "too large", "f": "fp1", "extra": "kept"})
        s.scripted_writes = scripted
        s.write_states_with_progress("v", "fp2", states, done)
        assert s.scripted_writes is scripted and s.read_progress("v") == done
        written[scripted] = [
            store.client.hgetall(s.layout.state_key("v", entity)) for entity, _ in states
        ]
    assert written[True] == written[False]
    assert written[True][7] == {b"s": b"state 7", b"f": b"fp2", b"extra": b"kept"}
    assert written[True][2_000] == {b"s": b"state 2000", b"f": b"fp2"}


def test_a_server_refusing_scripts_gets_the_pipeline(store: Store) -> None:
    """A Redis user whose ACL refuses EVAL: the states and the progress are written with the
    pipeline, and later writes go straight to it."""
    with store.user_without("noscript", "eval", "evalsha") as limited:
        s = StateStore(limited, store.prefix)
        states = [("a", b"1"), ("b", b"2")]
        done = MaterializeProgress("run1", 1_000, "fp1", "b", 2, 2)
        s.write_states_with_progress("v", "fp1", states, done)
        assert not s.scripted_writes
        assert s.read_states([("v", "a"), ("v", "b")]) == [
            StoredState(b"1", "fp1"),
            StoredState(b"2", "fp1"),
        ]
        assert s.read_progress("v") == done


def test_a_failed_state_write_is_never_claimed_by_the_progress(store: Store) -> None:
    """A state that cannot be written (its key holds another type) fails the batch before the
    progress record is written, by script and by the pipeline alike: a resumed run must not
    skip an entity whose state is missing (a non-transactional pipeline runs every command
    before it reports the first error, so the record must not ride in it)."""
    for scripted in (True, False):
        s = StateStore(store.client, store.new_prefix())
        earlier = MaterializeProgress("run1", 1_000, "fp1", "a", 1, 1)
        s.write_states_with_progress("v", "fp1", [("a", b"0")], earlier)
        store.client.set(s.layout.state_key("v", "e1"), "not a hash")
        s.scripted_writes = scripted
        done = MaterializeProgress("run1", 1_000, "fp1", "e2", 4, 4)
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            s.write_states_with_progress(
                "v", "fp1", [("e0", b"1"), ("e1", b"2"), ("e2", b"3")], done
            )
        assert s.read_progress("v") == earlier
        assert s.scripted_writes is scripted  # a wrong key is no reason to stop using scripts
