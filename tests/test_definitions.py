from __future__ import annotations

from pathlib import Path

import pytest

import featurepipe as fp
from featurepipe.errors import DefinitionError, FeaturepipeError, UnsupportedOperationError
from tests.schema import Ev, entity, source, view


def test_unknown_field_names_view_and_field() -> None:
    with pytest.raises(DefinitionError, match=r"view 'v'.*unknown field 'amuont'"):
        view({"a": lambda t: fp.sum(t.amuont)})


def test_sum_of_string_is_a_type_error_naming_the_feature() -> None:
    with pytest.raises(DefinitionError, match=r"view 'v', feature 'total'.*sum needs a numeric"):
        view({"total": lambda t: fp.sum(t.s)})


@pytest.mark.parametrize("window", ["1x", "-1h", "0m", "h", "1.5h"])
def test_bad_window_string(window: str) -> None:
    with pytest.raises(DefinitionError, match=r"feature 'c'.*bad duration"):
        view({"c": lambda t: fp.count(window=window)})


def test_cycle_in_derived_features() -> None:
    with pytest.raises(DefinitionError, match=r"cycle: a -> b -> a"):
        view({"a": fp.feature("b") + 1, "b": fp.feature("a") * 2, "c": lambda t: fp.count()})


def test_reference_to_missing_feature() -> None:
    with pytest.raises(DefinitionError, match="names no feature"):
        view({"a": fp.feature("nope") + 1})


def test_field_outside_aggregation() -> None:
    with pytest.raises(DefinitionError, match="outside an aggregation"):
        view({"a": lambda t: t.x + fp.sum(t.x)})


def test_nested_aggregation() -> None:
    with pytest.raises(DefinitionError, match="cannot be nested"):
        view({"a": lambda t: fp.sum(fp.count())})


def test_where_must_be_boolean() -> None:
    with pytest.raises(DefinitionError, match="where= needs a boolean"):
        view({"a": lambda t: fp.count(where=t.x)})


@pytest.mark.parametrize(
    ("expr", "match"),
    [
        (lambda t: fp.last(t.x.cast("str")), "cast from float to str is not offered"),
        (lambda t: fp.last(fp.encode(t.s)), "no fitted artifact is in the registry"),
        (lambda t: fp.last(fp.standardize(t.x)), "run `featurepipe fit"),
        (lambda t: fp.last(t.s.slice(-2)), "negative offsets are not offered"),
    ],
)
def test_unsupported_operations_fail_at_definition_time(expr: object, match: str) -> None:
    with pytest.raises(UnsupportedOperationError, match=match):
        view({"f": expr})


@pytest.mark.parametrize(
    ("expr", "match"),
    [
        (lambda t: fp.count(hop="5m"), "hop= needs a window="),
        (lambda t: fp.sum(t.x, window="1h", hop="7m"), r"hop='7m' must divide the window \(3,600s\)"),
        (lambda t: fp.count(window="1h", hop="2h"), "must divide the window"),
        (lambda t: fp.count(window="1h", hop="0s"), "hop: bad duration .0s.: expected a positive"),
        (lambda t: fp.count(window="1h", hop="soon"), "hop: "),
    ],
)
def test_hop_checked_at_definition_time(expr: object, match: str) -> None:
    with pytest.raises(DefinitionError, match=match) as err:
        view({"f": expr})
    assert "'f'" in str(err.value)  # the feature at fault is named


def test_a_hopped_window_is_a_new_version_and_other_views_keep_theirs() -> None:
    # the fingerprint of _spend before hop= existed (a literal: views without a hop keep the
    # version their stores serve)
    assert _fp(_spend) == "faf62485545317cf"
    hopped = _fp(lambda t: {"s": fp.sum(t.x.fill_null(0.0), window="1h", hop="5m"), "c": fp.count()})
    assert hopped != _fp(_spend)
    other = _fp(lambda t: {"s": fp.sum(t.x.fill_null(0.0), window="1h", hop="10m"), "c": fp.count()})
    assert other != hopped
    assert _fp(lambda t: {"s": fp.sum(t.x.fill_null(0.0), window="1h", hop="1h"), "c": fp.count()}) != _fp(_spend)


def test_expression_has_no_truth_value() -> None:
    with pytest.raises(DefinitionError, match="no truth value"):
        view({"f": lambda t: fp.count(where=t.x > 1 and t.n > 2)})


def test_feature_name_clash_with_entity_key() -> None:
    with pytest.raises(DefinitionError, match="clashes with the entity key"):
        view({"k": lambda t: fp.count()})


def test_default_type_checked() -> None:
    with pytest.raises(DefinitionError, match="does not fit"):
        view({"f": lambda t: fp.sum(t.x, default="zero")})


def test_errors_share_one_root() -> None:
    assert issubclass(DefinitionError, FeaturepipeError)
    assert issubclass(UnsupportedOperationError, FeaturepipeError)
    assert issubclass(fp.ParityError, FeaturepipeError)


def test_entity_key_must_be_in_source() -> None:
    other = fp.Entity("merchant", key="merchant_id")
    with pytest.raises(DefinitionError, match="key 'merchant_id' is not a field"):
        fp.feature_view(entity=other, source=source)(lambda t: {"c": fp.count()})


def test_unsupported_schema_type() -> None:
    from pydantic import BaseModel

    class Bad(BaseModel):
        k: str
        tags: list[str]
        ts: fp.dsl.definitions.datetime  # type: ignore[name-defined]

    with pytest.raises(DefinitionError, match="field 'tags' has unsupported type"):
        fp.Source("bad", schema=Bad, timestamp="ts")


def test_duplicate_view_names_in_a_package(tmp_path: Path) -> None:
    body = (
        "import featurepipe as fp\nfrom tests.schema import entity, source\n"
        "@fp.feature_view(entity=entity, source=source, name='dup')\n"
        "def v(t):\n    return {'c': fp.count()}\n"
    )
    (tmp_path / "a.py").write_text(body)
    (tmp_path / "b.py").write_text(body)
    with pytest.raises(DefinitionError, match="duplicate feature view name"):
        fp.load_definitions(tmp_path)


def test_load_example_definitions() -> None:
    defs = fp.load_definitions(Path(__file__).parents[1] / "feature_defs")
    v = defs.view("user_spend")
    kinds = {a.kind for a in v.ir.aggs}
    assert kinds == {
        "count", "sum", "mean", "min", "max", "var", "std", "first", "last", "count_distinct"
    }
    assert len(v.feature_names) >= 15


def test_source_fields_follow_the_contract() -> None:
    """Every field of the pydantic contract, in order, with its type; ``T | None`` is nullable."""
    fields = {name: (dtype.value, nullable) for name, (dtype, nullable) in source.fields.items()}
    assert list(fields) == list(Ev.model_fields)
    assert fields == {
        "k": ("str", False), "x": ("float", True), "n": ("int", True), "s": ("str", True),
        "b": ("bool", True), "ts": ("datetime", False),
    }


# ---- fingerprints ------------------------------------------------------------------------------


def _spend(t: object) -> dict[str, object]:
    amount = t.x.fill_null(0.0)  # type: ignore[attr-defined]
    return {"s": fp.sum(amount, window="1h"), "c": fp.count()}


def _spend_renamed(t: object) -> dict[str, object]:
    value_or_zero = t.x.fill_null(0.0)  # type: ignore[attr-defined]
    return {"s": fp.sum(value_or_zero, window="1h"), "c": fp.count()}


def _spend_reordered(t: object) -> dict[str, object]:
    return {"c": fp.count(), "s": fp.sum(t.x.fill_null(0.0), window="1h")}  # type: ignore[attr-defined]


def _fp(fn: object, **kw: object) -> str:
    return fp.feature_view(entity=entity, source=source, name="spend", **kw)(fn).fingerprint  # type: ignore[arg-type]


def test_fingerprint_ignores_local_names_but_not_feature_order() -> None:
    assert _fp(_spend) == _fp(_spend_renamed)
    # the declaration order fixes the per-entity state layout: a new version
    assert _fp(_spend) != _fp(_spend_reordered)


def test_fingerprint_changes_with_the_definition() -> None:
    base = _fp(_spend)
    assert _fp(lambda t: {"s": fp.sum(t.x.fill_null(0.0), window="2h"), "c": fp.count()}) != base
    assert _fp(lambda t: {"s": fp.sum(t.x.fill_null(1.0), window="1h"), "c": fp.count()}) != base
    assert _fp(lambda t: {"s": fp.sum(t.x.fill_null(0.0), window="1h"), "c": fp.count(t.x)}) != base
    assert _fp(_spend, lateness="2h") != base


def test_fingerprint_independent_of_other_views(tmp_path: Path) -> None:
    a = (
        "import featurepipe as fp\nfrom tests.schema import entity, source\n"
        "@fp.feature_view(entity=entity, source=source)\n"
        "def alpha(t):\n    return {'c': fp.count(window='1h')}\n"
    )
    b = (
        "import featurepipe as fp\nfrom tests.schema import entity, source\n"
        "@fp.feature_view(entity=entity, source=source)\n"
        "def beta(t):\n    return {'m': fp.max(t.x)}\n"
    )
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.py").write_text(a + "\n" + b.split("\n", 2)[2])
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "z.py").write_text(b + "\n" + a.split("\n", 2)[2])
    d1 = fp.load_definitions(tmp_path / "one")
    d2 = fp.load_definitions(tmp_path / "two")
    assert d1.view("alpha").fingerprint == d2.view("alpha").fingerprint
    assert d1.view("beta").fingerprint == d2.view("beta").fingerprint


@pytest.mark.parametrize(("key", "declared"), [("x", "float"), ("b", "bool"), ("ts", "datetime")])
def test_an_entity_key_must_be_int_or_str(key: str, declared: str) -> None:
    """Float, bool and datetime keys would be refused only at lookup; they fail at definition."""
    bad = fp.Entity("thing", key=key)
    with pytest.raises(DefinitionError) as e:
        fp.feature_view(entity=bad, source=source, name="v")(lambda t: {"c": fp.count()})
    assert f"key '{key}' is declared {declared} in source 'evs'" in str(e.value)
    assert "an entity key must be int or str" in str(e.value)
