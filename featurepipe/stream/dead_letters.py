"""Dead letters: events that break the contract go to ``<topic>.dlq``, bytes untouched.

Each dead letter carries the original key and value and two headers: ``featurepipe-reason``
(what was wrong) and ``featurepipe-source`` (``topic/partition/offset``). They are published and
flushed before the batch commits, so a crash in between can publish one twice (at-least-once)
but never lose one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer

from featurepipe.stream.retry import Backoff

DLQ_SUFFIX = ".dlq"
REASON_HEADER = "featurepipe-reason"
SOURCE_HEADER = "featurepipe-source"
FLUSH_TIMEOUT_S = 30


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    message: Any  # the kafka ConsumerRecord as received
    reason: str

    @property
    def kind(self) -> str:
        """The reason up to its first colon (the field or check that failed), for counting."""
        return self.reason.split(":")[0]


class DeadLetterPublisher:
    """Owns the producer that publishes dead letters."""

    def __init__(self, producer: KafkaProducer, retry: Backoff) -> None:
        self.producer = producer
        self.retry = retry

    def publish(self, dead: list[DeadLetter]) -> None:
        """Send every dead letter and wait until the broker has them."""
        for d in dead:
            m = d.message
            headers = [
                (REASON_HEADER, d.reason.encode()),
                (SOURCE_HEADER, f"{d.topic}/{m.partition}/{m.offset}".encode()),
            ]
            self.producer.send(
                d.topic + DLQ_SUFFIX, key=m.key, value=m.value or b"", headers=headers
            )
        self.retry(lambda: self.producer.flush(timeout=FLUSH_TIMEOUT_S))

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()
