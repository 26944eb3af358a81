"""Where the services are: arguments, then environment, then ``featurepipe dev up``, then defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

KAFKA_ENV = "KAFKA_BOOTSTRAP_SERVERS"
DEFAULT_KAFKA = "127.0.0.1:9092"


def kafka_bootstrap(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    env = os.environ.get(KAFKA_ENV)
    if env:
        return env
    from featurepipe.dev.infra import load

    dev = load(Path(".featurepipe") / "dev.json")
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
    from featurepipe.dev.infra import load

    dev = load(Path(".featurepipe") / "dev.json")
    return dev.redis_url if dev is not None else None
