"""featurepipe: declare features once; run them in batch (Polars) and per event, identically."""

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
    bucketize,
    coalesce,
    count,
    count_distinct,
    encode,
    feature,
    first,
    hash_bucket,
    last,
    lit,
    max,
    mean,
    min,
    standardize,
    std,
    sum,
    var,
    when,
)
from featurepipe.dsl.loader import Definitions
from featurepipe.errors import (
    DataError,
    DefinitionError,
    FeaturepipeError,
    ParityError,
    StateError,
    UnsupportedOperationError,
)

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "DefinitionError",
    "Definitions",
    "Entity",
    "FeatureView",
    "FeaturepipeError",
    "KafkaSource",
    "ParityError",
    "ParquetSource",
    "Source",
    "StateError",
    "UnsupportedOperationError",
    "__version__",
    "bucketize",
    "coalesce",
    "count",
    "count_distinct",
    "encode",
    "feature",
    "feature_view",
    "first",
    "hash_bucket",
    "last",
    "lit",
    "load_definitions",
    "max",
    "mean",
    "min",
    "standardize",
    "std",
    "sum",
    "var",
    "when",
]
