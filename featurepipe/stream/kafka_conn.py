"""Reaching the Kafka broker: one check, one clear error, before any client waits 30 s."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from featurepipe.errors import FeaturepipeError
from featurepipe.settings import kafka_security, scrub

# how long a first contact may take before the broker counts as unreachable
CONNECT_TIMEOUT_MS = 5000


class BrokerUnreachableError(FeaturepipeError):
    """The Kafka broker does not answer at the configured address."""


def require_broker(bootstrap: str, purpose: str, *, timeout_ms: int = CONNECT_TIMEOUT_MS) -> None:
    """Raise ``BrokerUnreachableError`` naming ``bootstrap`` unless a broker answers there.

    ``purpose`` says what the command needed the broker for (e.g. "stream worker").

    kafka-python logs every failed connection attempt of the probe (a dozen lines for one
    unreachable address); the error raised here says it all, so its loggers are silenced for
    the probe and restored after it.
    """
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=max(timeout_ms, 1000),
            **kafka_security(),
        )
    except (KafkaError, OSError, ValueError) as e:
        detail = scrub(str(e) or type(e).__name__, bootstrap)
        raise BrokerUnreachableError(
            f"Kafka broker at {bootstrap} is unreachable ({purpose}): {detail}. Check that the "
            "broker runs (`featurepipe dev status`, or `featurepipe dev up` for the embedded "
            "one) and the address: --bootstrap, $KAFKA_BOOTSTRAP_SERVERS, or kafka_bootstrap "
            "in featurepipe.toml; for SASL/TLS, the KAFKA_SECURITY_PROTOCOL/KAFKA_SASL_*/"
            "KAFKA_SSL_* settings."
        ) from None
    else:
        admin.close()
    finally:
        logger.setLevel(level)
