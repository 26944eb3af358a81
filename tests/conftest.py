from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # CI is reproducible; hunt with FEATUREPIPE_HYPOTHESIS_SCALE=10 locally
    print_blob=True,
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a stream test with each supported Kafka consumer (workers started in this process
    or in subprocesses read FEATUREPIPE_KAFKA_CLIENT)."""
    monkeypatch.setenv("FEATUREPIPE_KAFKA_CLIENT", request.param)
    return str(request.param)
