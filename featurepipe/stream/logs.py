"""kafka-python's logging, made fit for a command's output.

kafka-python narrates every connection, metadata refresh and group rejoin at INFO, logs some
races of its own socket handling with a traceback, and warns of "blocking the event loop"
whenever its network thread waited for the GIL. ``quiet_kafka_logging`` keeps its warnings
and errors, one line each, drops that false alarm, and leaves featurepipe's loggers alone.
"""

from __future__ import annotations

import logging


class _SlowStepFilter(logging.Filter):
    """Drops kafka-python's "Task ... ran for 0.1xxs ... It is blocking the event loop" warning.

    kafka-python 3 runs its network I/O as tasks on its own event loop and times each task
    step by the wall clock, warning past ``slow_task_threshold_secs`` (0.1 s). In a process that
    evaluates features, the loop's thread waits for the GIL while the main thread runs long
    C calls (msgpack, Polars, Redis replies), so the clock runs on while the step itself does
    nothing slow: a false alarm, one line per stall. Every other kafka warning is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "blocking the event loop" not in record.getMessage()


class _OneLine(logging.Formatter):
    """A client library's warning as one line: the exception's type and text, no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            text += f" ({type(error).__name__}: {error})"
        return f"{record.name}: {record.levelname.lower()}: {text}"


def quiet_kafka_logging() -> None:
    """kafka-python's loggers at WARNING, one line per record on stderr (no traceback),
    without its GIL-stall false alarm. Idempotent."""
    logger = logging.getLogger("kafka")
    logger.setLevel(logging.WARNING)
    selector = logging.getLogger("kafka.net.selector")
    if not any(isinstance(f, _SlowStepFilter) for f in selector.filters):
        selector.addFilter(_SlowStepFilter())
    if not any(isinstance(h.formatter, _OneLine) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(_OneLine())
        logger.addHandler(handler)
        logger.propagate = False
