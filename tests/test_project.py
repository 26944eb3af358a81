"""The project root and its configuration file; `featurepipe init`; the package's public API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from featurepipe.online.redis_conn import resolve_url
from featurepipe.project import ProjectConfigError, load_project, use_project
from featurepipe.settings import kafka_bootstrap


def _fp(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    for var in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        if env is None or var not in env:
            full.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=full,
    )


def test_featurepipe_toml_sets_paths_relative_to_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "featurepipe.toml").write_text(
        'definitions = "src/defs"\ndata_root = "lake"\nprefix = "shop"\n'
    )
    sub = tmp_path / "notebooks" / "deep"
    sub.mkdir(parents=True)
    for start in (tmp_path, sub):
        monkeypatch.chdir(start)
        p = load_project()
        assert p.root == tmp_path.resolve()
        assert p.definitions == tmp_path.resolve() / "src" / "defs"
        assert p.data_root == tmp_path.resolve() / "lake"
        assert p.prefix == "shop"
        assert p.group == "featurepipe"  # default


def test_pyproject_table_counts_and_a_pyproject_without_it_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.featurepipe]\ndefinitions = "fdefs"\n')
    inner = tmp_path / "pkg"
    inner.mkdir()
    (inner / "pyproject.toml").write_text('[project]\nname = "x"\n')  # no featurepipe table
    monkeypatch.chdir(inner)
    p = load_project()
    assert p.root == tmp_path.resolve()
    assert p.definitions == tmp_path.resolve() / "fdefs"
    assert p.config_file == tmp_path.resolve() / "pyproject.toml"


def test_no_configuration_means_the_working_directory_and_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    p = load_project()
    assert p.root == tmp_path.resolve()
    assert p.definitions == tmp_path.resolve() / "feature_defs"
    assert p.data_root == tmp_path.resolve()
    assert (p.prefix, p.group, p.redis_url, p.kafka_bootstrap) == ("fp", "featurepipe", None, None)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('definitons = "x"\n', "unknown key(s) definitons"),
        ("prefix = 3\n", "'prefix' must be a non-empty string, got 3"),
        ('prefix = "\n', "cannot read project configuration"),
    ],
)
def test_bad_configuration_is_a_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "featurepipe.toml").write_text(text)
    with pytest.raises(ProjectConfigError) as e:
        load_project(tmp_path)
    assert fragment in str(e.value)
    assert "featurepipe.toml" in str(e.value)


def test_settings_precedence_argument_env_file_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "featurepipe.toml").write_text(
        'redis_url = "redis://file-host:6390/2"\nkafka_bootstrap = "file-host:9099"\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    use_project(load_project(tmp_path))
    try:
        assert resolve_url(None) == ("redis://file-host:6390/2", "project configuration")
        assert kafka_bootstrap(None) == "file-host:9099"
        monkeypatch.setenv("REDIS_URL", "redis://env-host:6379/0")
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env-host:9092")
        assert resolve_url(None) == ("redis://env-host:6379/0", "$REDIS_URL")
        assert kafka_bootstrap(None) == "env-host:9092"
        assert resolve_url("redis://arg:1/0") == ("redis://arg:1/0", "argument")
        assert kafka_bootstrap("arg:1") == "arg:1"
    finally:
        use_project(None)


def test_cli_finds_the_project_from_a_subdirectory_and_defs_is_relative_to_the_root(
    tmp_path: Path,
) -> None:
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "fraud.py").write_text((root / "feature_defs" / "fraud.py").read_text())
    (tmp_path / "featurepipe.toml").write_text('definitions = "defs"\n')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    out = _fp(sub, "plan")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "user_spend" in out.stdout
    # --defs is relative to the project root, not to the working directory
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "fraud.py").write_text((root / "feature_defs" / "fraud.py").read_text())
    out = _fp(sub, "plan", "--defs", "other")
    assert out.returncode == 0, out.stdout + out.stderr
    missing = _fp(sub, "plan", "--defs", "nowhere")
    assert missing.returncode == 2
    assert "Traceback" not in missing.stdout + missing.stderr


def test_init_writes_a_runnable_project_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = _fp(tmp_path, "init", "shop")
    assert out.returncode == 0, out.stdout + out.stderr
    shop = tmp_path / "shop"
    for f in ("featurepipe.toml", "feature_defs/orders.py", "README.md", "data/labels.csv",
              "data/new_orders.csv", "data/orders/part-0.parquet"):
        assert (shop / f).is_file(), f
    plan = _fp(shop, "plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "customer_orders" in plan.stdout
    again = _fp(tmp_path, "init", "shop")
    assert again.returncode == 2
    assert "already holds a project" in again.stdout
    assert "Traceback" not in again.stdout + again.stderr


def test_skeleton_data_is_the_14_days_before_today_split_at_the_cutover(tmp_path: Path) -> None:
    from featurepipe.dev.skeleton import create

    sk = create(tmp_path, today=date(2026, 3, 10))
    assert sk.cutover == date(2026, 3, 9)
    hist = pl.read_parquet(tmp_path / "data" / "orders" / "part-0.parquet")
    new = pl.read_csv(tmp_path / "data" / "new_orders.csv")
    lo, hi = hist["ordered_at"].min(), hist["ordered_at"].max()
    assert str(lo) >= "2026-02-24" and str(hi) < "2026-03-09"
    assert all("2026-03-09T" <= t < "2026-03-10T" for t in new["ordered_at"].to_list())
    assert hist.height + new.height == 5000


def test_public_api_is_exported_from_the_package() -> None:
    code = (
        "import featurepipe as fp\n"
        "assert callable(fp.FeatureStore) and callable(fp.testing.assert_parity)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("fit", "--start", "yesterday"),
        ("get", "--entity", "user_id=u1", "--features", "user_spend", "--at", "yesterday"),
        ("materialize", "--until", "yesterday"),
        ("recover", "--until", "yesterday"),
    ],
)
def test_every_time_option_is_one_parser_with_one_message(tmp_path: Path, args: tuple[str, ...]) -> None:
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "feature_defs").mkdir()
    (tmp_path / "feature_defs" / "fraud.py").write_text(
        (root / "feature_defs" / "fraud.py").read_text()
    )
    out = _fp(tmp_path, *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "'yesterday' is not an ISO-8601 date or date-time" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_feature_store_takes_its_settings_from_its_own_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FeatureStore(repo)`` run from inside another project reads ``repo``'s configuration,
    not the working directory's (closed loopback ports: the error names the URL and origin)."""
    import featurepipe as fp
    from featurepipe.errors import FeaturepipeError

    root = Path(__file__).resolve().parents[1]
    shop, here = tmp_path / "shop", tmp_path / "here"
    for p, port in ((shop, 1), (here, 2)):
        (p / "feature_defs").mkdir(parents=True)
        (p / "feature_defs" / "fraud.py").write_text(
            (root / "feature_defs" / "fraud.py").read_text()
        )
        (p / "featurepipe.toml").write_text(f'redis_url = "redis://127.0.0.1:{port}/0"\n')
    monkeypatch.chdir(here)
    monkeypatch.delenv("REDIS_URL", raising=False)
    store = fp.FeatureStore(shop)
    with pytest.raises(FeaturepipeError) as e:
        store.get_online_features({"user_id": ["u1"]}, ["user_spend:txn_count_1h"])
    assert "redis://127.0.0.1:1/0 (project configuration)" in str(e.value)


def _dev_record(state_dir: Path, redis_port: int) -> None:
    state_dir.mkdir(parents=True)
    (state_dir / "dev.json").write_text(
        json.dumps(
            {
                "kafka_bootstrap": "127.0.0.1:1",
                "redis_url": f"redis://127.0.0.1:{redis_port}/0",
                "kafka_pid": 0,
                "redis_pid": 0,
                "workdir": str(state_dir),
            }
        )
    )


def test_the_dev_record_is_the_projects_not_the_working_directorys(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    shop, elsewhere = tmp_path / "shop", tmp_path / "elsewhere"
    (shop / "feature_defs").mkdir(parents=True)
    (shop / "feature_defs" / "fraud.py").write_text((root / "feature_defs" / "fraud.py").read_text())
    (shop / "featurepipe.toml").write_text("")
    _dev_record(shop / ".featurepipe", 3)
    _dev_record(elsewhere / ".featurepipe", 4)
    args = ("get", "--entity", "user_id=u1", "--features", "user_spend")
    # from elsewhere, naming the project
    out = _fp(elsewhere, *args, "--repo", str(shop))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "redis://127.0.0.1:3/0 (featurepipe dev up)" in out.stdout
    # from a subdirectory of the project: found upwards
    (shop / "data").mkdir()
    out = _fp(shop / "data", *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "redis://127.0.0.1:3/0 (featurepipe dev up)" in out.stdout


def test_outside_any_project_every_command_says_what_to_do(tmp_path: Path) -> None:
    for args in (
        ("plan",),
        ("get", "--entity", "user_id=u1", "--features", "user_spend"),
        ("training-set", "--entities", "l.csv", "--features", "v", "--out", "o.parquet"),
        ("materialize", "--until", "2026-01-02"),
    ):
        out = _fp(tmp_path, *args)
        assert out.returncode == 2, out.stdout + out.stderr
        text = " ".join(out.stdout.split())
        assert "no featurepipe project here" in text and "featurepipe init" in text, text
        assert "Traceback" not in out.stdout + out.stderr
    out = _fp(tmp_path, "plan", "--defs", "nope")
    assert out.returncode == 2
    assert "--defs nope: no such file or directory" in " ".join(out.stdout.split())
