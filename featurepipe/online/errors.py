"""Errors of the online store."""

from __future__ import annotations

from featurepipe.errors import FeaturepipeError


class OnlineStoreError(FeaturepipeError):
    """The online store cannot be reached, is misconfigured, or holds unexpected data."""
