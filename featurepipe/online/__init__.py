"""The online store: per-entity state in Redis, its key layout, and bulk loading from Parquet.

``layout`` states the keys and fields (shared by ``materialize`` and the stream worker),
``redis_conn`` opens a checked connection, ``materialize`` bootstraps the store from the
batch log up to a cut-over instant. See docs/online-store.md.
"""

from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.layout import (
    DEFAULT_PREFIX,
    OnlineStoreLayout,
    encode_entity,
    meta_key,
    state_key,
)

__all__ = [
    "DEFAULT_PREFIX",
    "OnlineStoreError",
    "OnlineStoreLayout",
    "encode_entity",
    "meta_key",
    "state_key",
]
