"""Static checks of docker-compose.yml (no Docker engine needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

COMPOSE_PATH = Path(__file__).resolve().parents[1] / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(COMPOSE_PATH.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    svcs = data.get("services")
    assert isinstance(svcs, dict), "docker-compose.yml must have a services mapping"
    return svcs


def _env(service: dict[str, Any]) -> dict[str, str]:
    """Normalise `environment` (mapping or list of KEY=VALUE) to a str -> str dict."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        out: dict[str, str] = {}
        for item in raw:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def _listeners(spec: str) -> dict[str, tuple[str, int]]:
    """Parse 'NAME://host:port,...' into {NAME: (host, port)}."""
    out: dict[str, tuple[str, int]] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, address = entry.partition("://")
        assert sep, f"malformed listener {entry!r}"
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def _host_port(url_or_address: str) -> tuple[str, int]:
    parts = urlsplit(url_or_address if "://" in url_or_address else f"//{url_or_address}")
    assert parts.hostname is not None and parts.port is not None, url_or_address
    return parts.hostname, parts.port


def _published_ports(service: dict[str, Any]) -> list[int]:
    """Host ports a service publishes (short or long syntax); container-only ports skipped."""
    published: list[int] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                published.append(int(str(entry["published"])))
            continue
        spec = str(entry).split("/")[0]  # drop /tcp, /udp
        pieces = spec.rsplit(":", 2)
        if len(pieces) >= 2:  # "host:container" or "ip:host:container"
            published.append(int(pieces[-2]))
    return published


def test_required_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "redis", "worker"} <= services.keys()


def test_kafka_runs_kraft_without_zookeeper(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:")
    env = _env(kafka)
    roles = {role.strip() for role in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert {"broker", "controller"} <= roles

    for name, svc in services.items():
        assert "zookeeper" not in name.lower()
        for key, value in _env(svc).items():
            assert "ZOOKEEPER" not in key.upper(), f"{name}: {key}"
            assert "zookeeper" not in value.lower(), f"{name}: {key}={value}"


def test_kafka_quorum_voters_reference_node_and_controller_listener(
    services: dict[str, dict[str, Any]],
) -> None:
    env = _env(services["kafka"])
    node_id = int(env["KAFKA_NODE_ID"])
    voters: dict[int, tuple[str, int]] = {}
    for voter in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","):
        vid, sep, address = voter.strip().partition("@")
        assert sep, f"malformed voter {voter!r}"
        voters[int(vid)] = _host_port(address)
    assert node_id in voters

    listeners = _listeners(env["KAFKA_LISTENERS"])
    controller_names = {n.strip() for n in env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")}
    controller_ports = {listeners[n][1] for n in controller_names}
    assert voters[node_id][1] in controller_ports
    assert voters[node_id][0] in {"kafka", services["kafka"].get("hostname", "kafka")}

    mapped = {
        pair.split(":")[0].strip()
        for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    }
    assert set(listeners) <= mapped, "every listener needs a security protocol"
    assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 1


def test_kafka_external_listener_is_published(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    env = _env(kafka)
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    listeners = _listeners(env["KAFKA_LISTENERS"])
    assert advertised["PLAINTEXT"] == ("kafka", listeners["PLAINTEXT"][1])
    ext_host, ext_port = advertised["EXTERNAL"]
    assert ext_host == "localhost"
    assert listeners["EXTERNAL"][1] == ext_port
    assert ext_port in _published_ports(kafka)


def test_redis_is_version_7(services: dict[str, dict[str, Any]]) -> None:
    image = str(services["redis"]["image"])
    assert image.startswith("redis:7"), image
    assert 6379 in _published_ports(services["redis"])


def test_worker_env_points_at_in_network_services(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["worker"])

    kafka_env = _env(services["kafka"])
    advertised = _listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    listening_ports = {port for _, port in _listeners(kafka_env["KAFKA_LISTENERS"]).values()}
    in_network = {(h, p) for h, p in advertised.values() if h == "kafka" and p in listening_ports}
    for server in env["KAFKA_BOOTSTRAP_SERVERS"].split(","):
        assert _host_port(server.strip()) in in_network, server

    redis_url = urlsplit(env["REDIS_URL"])
    assert redis_url.scheme == "redis"
    redis_command = services["redis"].get("command") or ""
    redis_tokens = redis_command if isinstance(redis_command, list) else str(redis_command).split()
    redis_port = 6379
    if "--port" in redis_tokens:
        redis_port = int(redis_tokens[redis_tokens.index("--port") + 1])
    assert (redis_url.hostname, redis_url.port) == ("redis", redis_port)


def test_worker_waits_for_healthy_dependencies(services: dict[str, dict[str, Any]]) -> None:
    depends_on = services["worker"]["depends_on"]
    assert isinstance(depends_on, dict), "depends_on must use the long form with conditions"
    for dep in ("kafka", "redis"):
        assert depends_on[dep]["condition"] == "service_healthy"
        healthcheck = services[dep].get("healthcheck")
        assert isinstance(healthcheck, dict) and healthcheck.get("test"), dep
        assert not healthcheck.get("disable", False), dep

    kafka_test = " ".join(map(str, services["kafka"]["healthcheck"]["test"]))
    assert "/opt/kafka/bin/kafka-topics.sh" in kafka_test
    assert "--bootstrap-server localhost:9092" in kafka_test
    redis_test = " ".join(map(str, services["redis"]["healthcheck"]["test"]))
    assert "redis-cli" in redis_test and "ping" in redis_test


def test_worker_runs_stream(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    command = worker["command"]
    command_text = " ".join(command) if isinstance(command, list) else str(command)
    assert "pip install /app" in command_text
    assert "featurepipe stream --defs /app/feature_defs" in command_text
    assert any(str(v).split(":")[1] == "/app" for v in worker.get("volumes") or [])


def test_published_host_ports_are_unique(services: dict[str, dict[str, Any]]) -> None:
    ports = [port for svc in services.values() for port in _published_ports(svc)]
    assert ports, "expected at least one published port"
    assert len(ports) == len(set(ports)), f"duplicate host ports: {sorted(ports)}"


def test_several_workers_share_the_partitions(services: dict[str, dict[str, Any]]) -> None:
    """The worker service runs more than one replica (one consumer group: the default), and a
    topic the broker creates on first use has a partition for each of them."""
    replicas = int((services["worker"].get("deploy") or {}).get("replicas", 1))
    assert replicas >= 2
    command = services["worker"]["command"]
    command_text = " ".join(command) if isinstance(command, list) else str(command)
    assert "--group" not in command_text  # every replica in the project's group
    assert int(_env(services["kafka"])["KAFKA_NUM_PARTITIONS"]) >= replicas
