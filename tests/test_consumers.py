"""The worker's Kafka consumer interface: both clients on a real broker, and its settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from featurepipe import load_definitions
from featurepipe.dev import infra
from featurepipe.dev.datagen import generate_transactions
from featurepipe.errors import FeaturepipeError
from featurepipe.online.redis_conn import connect
from featurepipe.settings import kafka_client
from featurepipe.stream.consumers import librdkafka_security
from featurepipe.stream.produce import ensure_topics, produce_frame
from featurepipe.stream.worker import StreamWorker, WorkerConfig
from tests.services import services, unique

__all__ = ["services"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("max_batch", [1, 7])
@pytest.mark.usefixtures("kafka_client")
def test_tiny_batches_consume_every_event_once(services: infra.DevServices, max_batch: int) -> None:
    """Polls of 1 and 7 records (the confluent client asks librdkafka for what is fetched,
    then waits for one message): every event is applied, none twice."""
    topic, prefix = unique("tiny"), unique("tiny")
    ensure_topics(services.kafka_bootstrap, {topic: 2})
    events = generate_transactions(40, users=5, seed=3)
    produce_frame(events, topic, services.kafka_bootstrap, "user_id")
    defs = load_definitions(ROOT / "feature_defs")
    worker = StreamWorker(
        defs,
        WorkerConfig(
            bootstrap=services.kafka_bootstrap,
            group_id=prefix,
            prefix=prefix,
            max_batch=max_batch,
            idle_exit_s=3,
            max_events=40,
        ),
        connect(services.redis_url),
        views=["user_spend"],
        topics={"transactions": topic},
    )
    counters = worker.run()
    assert (counters.events, counters.valid, counters.invalid) == (40, 40, 0)
    assert counters.batches >= 40 // max_batch


def test_unknown_client_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FeaturepipeError, match="unknown Kafka client 'rdkafka'"):
        kafka_client("rdkafka")
    monkeypatch.setenv("FEATUREPIPE_KAFKA_CLIENT", "nope")
    with pytest.raises(FeaturepipeError, match="FEATUREPIPE_KAFKA_CLIENT"):
        kafka_client()
    monkeypatch.setenv("FEATUREPIPE_KAFKA_CLIENT", "confluent")
    assert kafka_client() == "confluent"
    assert kafka_client("kafka-python") == "kafka-python"  # the argument wins


def test_security_settings_reach_librdkafka_in_its_names(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": "s3cret",
        "KAFKA_SSL_CAFILE": "/etc/ca.pem",
        "KAFKA_SSL_CERTFILE": "/etc/cert.pem",
        "KAFKA_SSL_KEYFILE": "/etc/key.pem",
        "KAFKA_SSL_PASSWORD": "keypw",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # librdkafka's property names (CONFIGURATION.md of librdkafka)
    assert librdkafka_security() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ca.pem",
        "ssl.certificate.location": "/etc/cert.pem",
        "ssl.key.location": "/etc/key.pem",
        "ssl.key.password": "keypw",
    }


def test_stream_command_refuses_an_unknown_client_in_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", "stream", "--client", "rdkafka"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    text = (out.stdout + out.stderr).strip()
    assert out.returncode == 2, text
    assert "unknown Kafka client 'rdkafka'" in text and "Traceback" not in text
    assert len(text.splitlines()) == 1, text
