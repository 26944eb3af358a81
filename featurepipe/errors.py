"""One root exception type for everything featurepipe raises on purpose."""

from __future__ import annotations


class FeaturepipeError(Exception):
    """Root of every error featurepipe raises deliberately."""


class DefinitionError(FeaturepipeError):
    """A feature definition is invalid; raised at definition time, never per event.

    The message names the view and the feature at fault.
    """

    def __init__(self, message: str, *, view: str | None = None, feature: str | None = None):
        where = ""
        if view is not None:
            where = f"view '{view}'"
            if feature is not None:
                where += f", feature '{feature}'"
            where += ": "
        super().__init__(where + message)
        self.view = view
        self.feature = feature


class UnsupportedOperationError(DefinitionError):
    """An operation one backend cannot evaluate identically; refused at definition time."""


class DataError(FeaturepipeError):
    """Input data does not match the declared contract (schema, types, ordering)."""


class StateError(FeaturepipeError):
    """Per-entity state cannot answer a request (e.g. a query older than the retention horizon)."""


class ParityError(FeaturepipeError, AssertionError):
    """Batch and per-event outputs differ."""
