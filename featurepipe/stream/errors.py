"""Errors of the stream worker."""

from __future__ import annotations

from featurepipe.errors import FeaturepipeError


class StreamError(FeaturepipeError):
    """The worker cannot run as configured."""
