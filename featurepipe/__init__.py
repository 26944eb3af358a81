"""featurepipe: declare features once; run them in batch (Polars) and per event, identically.

``fp.FeatureStore(".")`` is the Python API over a project; ``fp.testing.assert_parity`` the
check for users' own test suites (imported on first use).
"""

from typing import TYPE_CHECKING, Any

from featurepipe.batch.registry import load_definitions
from featurepipe.dsl.definitions import (
    Entity,
    FeatureView,
    KafkaSource,
    ParquetSource,
    Source,
    feature_view,
)
from featurepipe.dsl.expr import (
    approx_percentile,
    bucketize,
    coalesce,
    count,
    count_by,
    count_distinct,
    decayed_count,
    decayed_sum,
    encode,
    feature,
    first,
    first_k,
    hash_bucket,
    last,
    last_distinct_k,
    last_k,
    lit,
    max,
    mean,
    min,
    mode,
    query_time,
    request,
    since_last,
    standardize,
    std,
    sum,
    var,
    when,
)
from featurepipe.dsl.loader import Definitions
from featurepipe.dsl.monitoring import monitor
from featurepipe.errors import (
    DataError,
    DefinitionError,
    FeaturepipeError,
    ParityError,
    StateError,
    UnsupportedOperationError,
)
from featurepipe.project import Project, load_project
from featurepipe.store import FeatureStore

if TYPE_CHECKING:
    from featurepipe import testing

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``featurepipe.testing`` without its own import statement, loaded only when used
    if name == "testing":
        import importlib

        return importlib.import_module("featurepipe.testing")
    raise AttributeError(f"module 'featurepipe' has no attribute {name!r}")


__all__ = [
    "DataError",
    "DefinitionError",
    "Definitions",
    "Entity",
    "FeatureStore",
    "FeatureView",
    "FeaturepipeError",
    "KafkaSource",
    "ParityError",
    "ParquetSource",
    "Project",
    "Source",
    "StateError",
    "UnsupportedOperationError",
    "__version__",
    "approx_percentile",
    "bucketize",
    "coalesce",
    "count",
    "count_by",
    "count_distinct",
    "decayed_count",
    "decayed_sum",
    "encode",
    "feature",
    "feature_view",
    "first",
    "first_k",
    "hash_bucket",
    "last",
    "last_distinct_k",
    "last_k",
    "lit",
    "load_definitions",
    "load_project",
    "max",
    "mean",
    "min",
    "mode",
    "monitor",
    "query_time",
    "request",
    "since_last",
    "standardize",
    "std",
    "sum",
    "testing",
    "var",
    "when",
]
