"""Dead letters: messages the worker cannot apply go to ``<topic>.dlq``, never stopping a partition.

A dead letter carries the original key and value, truncated only when the producer (or the
broker) would refuse them whole, and headers:

- ``featurepipe-reason``: what was wrong, in words (at most ``MAX_REASON_CHARS``);
- ``featurepipe-category``: the reason's category, one of a fixed set (``CATEGORIES``, or
  ``invalid field <name>`` for a declared field of the source): what the counters count;
- ``featurepipe-source``: ``topic/partition/offset`` of the original message;
- ``featurepipe-original-size``: the original value's size in bytes (``-1`` for no value): the
  dead letter's value is shorter exactly when it was truncated;
- ``featurepipe-original-key-size``: present only when the key was truncated.

They are published and flushed before the batch commits, so a crash in between can publish one
twice (at-least-once) but never lose one. A send the broker refuses as too large is sent again
with less of the payload kept; any other failure stops the batch before its commit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

from featurepipe.stream.errors import StreamError
from featurepipe.stream.retry import Backoff
from featurepipe.stream.validate import Invalid

log = logging.getLogger("featurepipe.stream")

DLQ_SUFFIX = ".dlq"
REASON_HEADER = "featurepipe-reason"
CATEGORY_HEADER = "featurepipe-category"
SOURCE_HEADER = "featurepipe-source"
ORIGINAL_SIZE_HEADER = "featurepipe-original-size"
ORIGINAL_KEY_SIZE_HEADER = "featurepipe-original-key-size"
FLUSH_TIMEOUT_S = 30

# The dead-letter producer's max_request_size: Kafka's default, which a broker with default
# settings (message.max.bytes) accepts. Larger payloads are truncated to fit.
MAX_DEAD_LETTER_BYTES = 1 << 20
MAX_REASON_CHARS = 1000
MAX_KEY_BYTES = 1024  # an entity key is short; a longer one is kept in part
_RECORD_OVERHEAD = 512  # batch and record framing, varints: generous
_SEND_ATTEMPTS = 5
_BROKER_REFUSED = (MessageSizeTooLargeError, RecordListTooLargeError)

# reason categories (bounded: counters and metric labels use them, never the free text)
NOT_KEYED = "not keyed by entity"
KEY_MISMATCH = "key is not the entity"
WRONG_PARTITION = "not on the key's partition"
EMPTY = "empty message"
TOO_LARGE = "payload too large"
INVALID = "invalid event"
INVALID_FIELD = "invalid field"  # + " <declared field name>"
INGEST_ERROR = "ingest error"
QUARANTINED = "entity quarantined"
STATE_TOO_LARGE = "state too large"
UNEXPECTED = "unexpected error"
CATEGORIES = (
    NOT_KEYED,
    KEY_MISMATCH,
    WRONG_PARTITION,
    EMPTY,
    TOO_LARGE,
    INVALID,
    INGEST_ERROR,
    QUARANTINED,
    STATE_TOO_LARGE,
    UNEXPECTED,
)


class Refused(Invalid):
    """A message refused for a reason of a known category (its key, its entity's state)."""

    def __init__(self, category: str, reason: str) -> None:
        super().__init__(reason)
        self.category = category


def categorize(error: Invalid, fields: frozenset[str]) -> str:
    """The category of a contract failure: the declared field it names, else a fixed label.

    The validator words a failure ``<field or location>: <message>``; only a name among the
    source's ``fields`` becomes part of a category, so free text from a message (an unknown
    field's name, a value) never does."""
    if isinstance(error, Refused):
        return error.category
    reason = error.reason
    if reason.startswith(EMPTY):
        return EMPTY
    if reason.startswith(TOO_LARGE):
        return TOO_LARGE
    head = reason.split(":", 1)[0].split(".", 1)[0].strip()
    if head in fields:
        return f"{INVALID_FIELD} {head}"
    return INVALID


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    message: Any  # the kafka ConsumerRecord as received
    reason: str
    category: str = INVALID

    @property
    def kind(self) -> str:
        """The category: what the counters count."""
        return self.category


def _fit(d: DeadLetter, limit: int) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of ``d`` within ``limit`` serialized bytes."""
    m = d.message
    value: bytes = m.value or b""
    key: bytes | None = m.key
    reason = d.reason if len(d.reason) <= MAX_REASON_CHARS else d.reason[:MAX_REASON_CHARS] + "…"
    headers = [
        (REASON_HEADER, reason.encode()),
        (CATEGORY_HEADER, d.category.encode()),
        (SOURCE_HEADER, f"{d.topic}/{m.partition}/{m.offset}".encode()),
        (ORIGINAL_SIZE_HEADER, str(-1 if m.value is None else len(m.value)).encode()),
    ]
    if key is not None and len(key) > MAX_KEY_BYTES:
        headers.append((ORIGINAL_KEY_SIZE_HEADER, str(len(key)).encode()))
        key = key[:MAX_KEY_BYTES]
    used = _RECORD_OVERHEAD + sum(len(k) + len(v) + 10 for k, v in headers) + len(key or b"")
    room = max(limit - used, 0)
    if len(value) > room:
        value = value[:room]
    return key, value, headers


def _smaller(limit: int) -> int:
    return limit // 16 if limit > 4 * _RECORD_OVERHEAD + MAX_REASON_CHARS * 4 else 0


class DeadLetterPublisher:
    """Owns the producer that publishes dead letters."""

    def __init__(self, producer: KafkaProducer, retry: Backoff) -> None:
        self.producer = producer
        self.retry = retry
        self.max_bytes = int(producer.config.get("max_request_size", MAX_DEAD_LETTER_BYTES))

    def publish(self, dead: list[DeadLetter]) -> None:
        """Send every dead letter and wait until the broker has them; payloads the producer or
        the broker refuses as too large are truncated further and sent again."""
        pending = [(d, self.max_bytes) for d in dead]
        error: BaseException | None = None
        for attempt in range(_SEND_ATTEMPTS):
            sent = []
            for d, limit in pending:
                while True:
                    key, value, headers = _fit(d, limit)
                    try:
                        future = self.producer.send(
                            d.topic + DLQ_SUFFIX, key=key, value=value, headers=headers
                        )
                        break
                    except MessageSizeTooLargeError:  # the producer's own estimate is larger
                        if limit == 0:
                            raise
                        limit = _smaller(limit)
                sent.append((d, limit, future))
            self.retry(lambda: self.producer.flush(timeout=FLUSH_TIMEOUT_S))
            pending = []
            for d, limit, future in sent:
                if future.succeeded():
                    continue
                error = future.exception
                if isinstance(error, _BROKER_REFUSED) and limit > 0:
                    limit = _smaller(limit)
                pending.append((d, limit))
            if not pending:
                return
            log.warning("%d dead letters not published (%s); sending again", len(pending), error)
            time.sleep(min(0.5 * 2**attempt, 5.0))
        raise StreamError(f"could not publish {len(pending)} dead letters: {error}")

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()
