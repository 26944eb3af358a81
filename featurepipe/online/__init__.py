"""The online store: per-entity state in Redis, read and written through one owner.

``state_store.StateStore`` is the only reader and writer of the store's keys (named in its
private helper ``layout``); ``redis_conn`` opens a checked connection, ``materialize``
bootstraps the store from the batch log up to a cut-over instant, ``lookup`` reads features.
See docs/online-store.md.
"""

from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.layout import (
    DEFAULT_PREFIX,
    OnlineStoreLayout,
    encode_entity,
    meta_key,
    state_key,
)
from featurepipe.online.state_store import StateStore, StateWrite

__all__ = [
    "DEFAULT_PREFIX",
    "OnlineStoreError",
    "OnlineStoreLayout",
    "StateStore",
    "StateWrite",
    "encode_entity",
    "meta_key",
    "state_key",
]
