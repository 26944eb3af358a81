"""Where the services are: arguments, then environment, then ``featurepipe dev up``, then defaults.

``featurepipe dev up`` (``featurepipe.dev.infra``) records the embedded services it started in
``.featurepipe/dev.json``; the record and its reader live here, so configuration depends on no
dev tooling.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KAFKA_ENV = "KAFKA_BOOTSTRAP_SERVERS"
DEFAULT_KAFKA = "127.0.0.1:9092"
DEV_STATE_FILE = Path(".featurepipe") / "dev.json"


@dataclass
class DevServices:
    """The record of running embedded services written by ``featurepipe dev up``."""

    kafka_bootstrap: str
    redis_url: str
    kafka_pid: int
    redis_pid: int
    workdir: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def load_dev_services(state_file: Path = DEV_STATE_FILE) -> DevServices | None:
    """The recorded embedded services, or None when there is no (readable) record."""
    if not state_file.exists():
        return None
    try:
        return DevServices(**json.loads(state_file.read_text()))
    except (ValueError, TypeError):
        return None


def kafka_bootstrap(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    env = os.environ.get(KAFKA_ENV)
    if env:
        return env
    dev = load_dev_services()
    return dev.kafka_bootstrap if dev is not None else DEFAULT_KAFKA


def kafka_security() -> dict[str, Any]:
    """SASL/TLS settings passed through to kafka-python from the environment.

    KAFKA_SECURITY_PROTOCOL (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), KAFKA_SASL_MECHANISM,
    KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SSL_CAFILE, KAFKA_SSL_CERTFILE,
    KAFKA_SSL_KEYFILE.
    """
    table = {
        "KAFKA_SECURITY_PROTOCOL": "security_protocol",
        "KAFKA_SASL_MECHANISM": "sasl_mechanism",
        "KAFKA_SASL_USERNAME": "sasl_plain_username",
        "KAFKA_SASL_PASSWORD": "sasl_plain_password",
        "KAFKA_SSL_CAFILE": "ssl_cafile",
        "KAFKA_SSL_CERTFILE": "ssl_certfile",
        "KAFKA_SSL_KEYFILE": "ssl_keyfile",
    }
    return {kw: os.environ[env] for env, kw in table.items() if os.environ.get(env)}


def dev_redis_url() -> str | None:
    dev = load_dev_services()
    return dev.redis_url if dev is not None else None
