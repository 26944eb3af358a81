"""Turning Kafka message bytes into events, or into a dead-letter reason."""

from __future__ import annotations

from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict

from featurepipe.dsl.definitions import Source
from featurepipe.ir.timebase import MAX_US, MIN_US, as_utc, to_epoch_us
from featurepipe.ir.types import DType

MAX_EVENT_BYTES = 256 * 1024


class Invalid(Exception):
    """An event that breaks the contract; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EventValidator:
    """Strict contract check of one source's events: unknown fields are refused too."""

    def __init__(self, source: Source, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self.source = source
        self.max_bytes = max_bytes
        self.model: type[BaseModel] = type(
            f"{source.schema.__name__}Strict",
            (source.schema,),
            # strict: no "12" for an int, no 1 for a bool, no epoch numbers for a datetime
            {"model_config": ConfigDict(extra="forbid", strict=True)},
        )
        self.datetimes = [n for n, (t, _) in source.fields.items() if t is DType.DATETIME]
        self.ints = [n for n, (t, _) in source.fields.items() if t is DType.INT]

    def parse(self, raw: bytes | None) -> dict[str, Any]:
        """The event as a dict with datetimes as epoch micros (UTC); raises ``Invalid``."""
        if raw is None:
            raise Invalid("empty message (no value)")
        if len(raw) > self.max_bytes:
            raise Invalid(f"payload too large: {len(raw):,} bytes > {self.max_bytes:,}")
        try:
            obj = self.model.model_validate_json(raw)
        except pydantic.ValidationError as e:
            first = e.errors()[:3]
            parts = [
                f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}" for err in first
            ]
            more = f" (+{e.error_count() - 3} more)" if e.error_count() > 3 else ""
            raise Invalid("; ".join(parts) + more) from None
        event = obj.__dict__.copy()
        for name in self.ints:  # the contract's int is int64 on both paths
            value = event[name]
            if value is not None and not -(2**63) <= value < 2**63:
                raise Invalid(f"{name}: {value} does not fit in int64")
        for name in self.datetimes:
            value = event[name]
            if value is None:
                continue
            us = to_epoch_us(value)
            # the accepted range is the batch path's too (featurepipe.ir.timebase)
            if not MIN_US <= us < MAX_US:
                raise Invalid(
                    f"{name}: {as_utc(value).isoformat()} outside the accepted range [1970, 2100)"
                )
            event[name] = us
        return event
