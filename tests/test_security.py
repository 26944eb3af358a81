"""Credentials never reach a message; the dev services are private to their owner; ``dev down``
signals only the processes it started.

Run as a user would: the CLI against an unreachable Redis and a Redis that refuses the password,
the embedded services started by ``dev up``, a stale record pointing at an unrelated process.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import redis
from kafka import KafkaAdminClient

from featurepipe.dev import infra
from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.redis_conn import connect
from featurepipe.settings import DevServices, kafka_security, redact_url
from tests.services import services

__all__ = ["services"]

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "p/a#s?s%2F"  # a '/', a '#', a '?' and a literal '%2F'
ENCODED = quote(PASSWORD, safe="")  # p%2Fa%23s%3Fs%252F: how a URL must carry it
# the password as written, as a URL carries it, and pieces a URL parser would split it into
SECRET_FORMS = [PASSWORD, ENCODED, "a#s?s", "s%252F", "s?s%2F", "/a#s"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "250", **(env or {})},  # rich wraps at the terminal width
    )


def _fp(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _assert_no_secret(text: str) -> None:
    for form in SECRET_FORMS:
        assert form not in text, (form, text)
    assert "as 'p'" not in text  # redis-py's "Port could not be cast ... as 'p'"


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> str:
    """host:port of a real valkey that requires a password (not the one the tests send)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("valkey") / "valkey.log"
    proc = infra.start_redis(port, log, password="the-right-one")
    assert infra._wait_port(port, 10), log.read_text()
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_cli_error_messages_never_show_the_password(tmp_path: Path, auth_redis: str) -> None:
    shutil.copytree(ROOT / "feature_defs", tmp_path / "feature_defs")
    closed = f"127.0.0.1:{_free_port()}"
    urls = {
        "unreachable": f"redis://app:{ENCODED}@{closed}/0",
        "refused": f"redis://app:{ENCODED}@{auth_redis}/0",
        "unencoded": f"redis://app:{PASSWORD}@{closed}/0",  # a parser sees 'p' as the port
        "query option": f"redis://{closed}/0?password={ENCODED}",
    }
    commands = {
        "get": ["get", "--entity", "user_id=u1", "--features", "user_spend:txn_count_1h"],
        "materialize": ["materialize", "--until", "2026-01-02"],
        "stream": ["stream", "--idle-exit", "1"],
    }
    runs = {}
    for kind, url in urls.items():
        for name, args in commands.items():
            runs[kind, name, "option"] = _start(tmp_path, *args, "--redis-url", url)
        runs[kind, "stream", "env"] = _start(tmp_path, "stream", env={"REDIS_URL": url})
    for (kind, name, how), proc in runs.items():
        out, _ = proc.communicate(timeout=180)
        where = f"{name} ({kind}, {how}): {out}"
        assert proc.returncode == 2, where
        assert "Traceback" not in out, where
        (line,) = [x for x in out.splitlines() if x.startswith("error:")]
        assert "***" in line, where
        _assert_no_secret(out)
        if kind == "refused":
            assert "refused the credentials" in line, where
        elif kind == "unencoded":
            assert "percent-encode" in line, where
        else:
            assert "cannot reach Redis" in line, where


def test_library_errors_never_show_the_password(auth_redis: str) -> None:
    for url in (
        f"redis://app:{ENCODED}@{auth_redis}/0",
        f"redis://:{ENCODED}@{auth_redis}/0",
        f"redis://app:{PASSWORD}@{auth_redis}/0",
        f"rediss://app:{ENCODED}@127.0.0.1:{_free_port()}/0",
    ):
        with pytest.raises(OnlineStoreError) as err:
            connect(url, timeout=2.0)
        _assert_no_secret(str(err.value))
        assert "***" in str(err.value)
    # the right password, percent-encoded as the URL must carry it, is decoded and accepted
    host = auth_redis
    client = connect(f"redis://:{quote('the-right-one', safe='')}@{host}/0", timeout=2.0)
    assert client.ping()
    client.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://app:{ENCODED}@h:1/0", "redis://app:***@h:1/0"),
        (f"redis://app:{PASSWORD}@h:1/0", "redis://app:***@h:1/0"),
        ("redis://:p@ss@h:1/0", "redis://:***@h:1/0"),
        (
            "rediss://h:1/0?ssl_cert_reqs=none&password=x1&db=2",
            "rediss://h:1/0?ssl_cert_reqs=none&password=***&db=2",
        ),
        ("unix:///tmp/r.sock?db=0&password=x1", "unix:///tmp/r.sock?db=0&password=***"),
        ("redis://h:1/0", "redis://h:1/0"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_kafka_sasl_password_never_logged(
    services: infra.DevServices, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """kafka-python's admin client logs its whole configuration at DEBUG."""
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "app")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    settings = kafka_security()
    assert settings["sasl_plain_password"] == PASSWORD  # the client gets the real text
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    with caplog.at_level(logging.DEBUG, logger="kafka"):
        admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap, **settings)
        admin.close()
    assert "sasl_plain_password" in caplog.text  # the configuration was logged ...
    _assert_no_secret(caplog.text)  # ... without the password


def test_dev_store_requires_its_password_kept_in_a_private_record(
    services: infra.DevServices,
) -> None:
    record = Path(services.workdir) / "dev.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    url = urlsplit(services.redis_url)
    assert url.password and len(url.password) >= 24
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=url.hostname, port=url.port, socket_timeout=5).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=url.hostname, port=url.port, password="guess", socket_timeout=5).ping()
    assert connect(services.redis_url).ping()
    # the password is not on the server's command line, which any local user can read
    cmdline = Path(f"/proc/{services.redis_pid}/cmdline").read_bytes().decode(errors="replace")
    assert url.password not in cmdline
    assert url.password not in repr(services)


def _stale_record(
    workdir: Path, pid: int, kafka_id: dict[str, str] | None, redis_id: dict[str, str] | None
) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    record = DevServices(
        kafka_bootstrap=f"127.0.0.1:{_free_port()}",
        redis_url=f"redis://127.0.0.1:{_free_port()}/0",
        kafka_pid=pid,
        redis_pid=pid,
        workdir=str(workdir),
        kafka_identity=kafka_id,
        redis_identity=redis_id,
    )
    path = workdir / "dev.json"
    path.write_text(record.to_json())
    return path


@pytest.fixture
def sleeper() -> subprocess.Popen[bytes]:
    """An unrelated process: what a reused PID points at."""
    proc = subprocess.Popen(["sleep", "300"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the child has exec'd: identity reads its program
        found = infra.identity(proc.pid)
        if found is not None and found["program"] == "sleep":
            break
        time.sleep(0.01)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_dev_down_never_signals_a_reused_pid(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    real = infra.identity(sleeper.pid)
    assert real is not None and real["program"] == "sleep"
    other_program = {"program": "/opt/elsewhere/valkey-server", "start": real["start"]}
    other_start = {"program": "sleep", "start": str(int(real["start"]) - 1)}
    for kafka_id, redis_id in ((other_program, other_start), (None, None)):
        workdir = tmp_path / "a" / ".featurepipe"
        record = _stale_record(workdir, sleeper.pid, kafka_id, redis_id)
        with pytest.raises(infra.DevInfraError) as err:
            infra.down(workdir)
        message = str(err.value)
        assert f"pid {sleeper.pid}" in message and "not signalled" in message, message
        time.sleep(0.2)
        assert sleeper.poll() is None  # still running
        assert not record.exists()  # the stale record is gone

    # the CLI says so, and exits non-zero
    _stale_record(tmp_path / "b" / ".featurepipe", sleeper.pid, other_program, other_start)
    down = _fp(tmp_path / "b", "dev", "down")
    assert down.returncode == 2, down.stdout + down.stderr
    assert "not signalled" in down.stdout and str(sleeper.pid) in down.stdout
    assert sleeper.poll() is None

    # the check is not vacuous: the recorded identity of this very process lets it be stopped
    _stale_record(tmp_path / "c" / ".featurepipe", sleeper.pid, real, real)
    assert infra.down(tmp_path / "c" / ".featurepipe") is True
    sleeper.wait(timeout=10)
    assert infra.identity(sleeper.pid) is None


def test_dev_up_hides_the_password_and_ignores_a_stale_record(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """``dev up`` over a stale record starts fresh services without touching the reused PID."""
    real = infra.identity(sleeper.pid)
    assert real is not None
    _stale_record(tmp_path / ".featurepipe", sleeper.pid, {"program": "x", "start": "0"}, None)
    try:
        up = _fp(tmp_path, "dev", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        record = infra.load(tmp_path / ".featurepipe" / "dev.json")
        assert record is not None and record.redis_pid != sleeper.pid
        password = urlsplit(record.redis_url).password
        assert password and password not in up.stdout and "redis://:***@" in up.stdout
        status = _fp(tmp_path, "dev", "status")
        assert status.returncode == 0 and password not in status.stdout, status.stdout
        assert sleeper.poll() is None
    finally:
        down = _fp(tmp_path, "dev", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert infra.identity(record.redis_pid) is None and infra.identity(record.kafka_pid) is None
    assert sleeper.poll() is None
