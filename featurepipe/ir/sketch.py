"""The bucket mapping of ``approx_percentile``: a deterministic, mergeable log-scale sketch.

A value falls in the bucket of its IEEE-754 binary64 bits with all but the top ``MANTISSA_BITS``
mantissa bits dropped (sign, exponent and 7 mantissa bits): 128 buckets per power of two, so a
bucket's representative (its value with the dropped bits zero, i.e. rounded toward zero) is
within a relative 2**-7 (0.78%) of every value in it, for normal numbers (subnormals keep an
absolute error below 2**-1029 instead). Keys are integers ordered like the values:

- x >= 0 (-0.0 is 0.0): ``bits >> 45``, 0 .. 0x7FF << 7 (+inf);
- x < 0: ``-(|x| bits >> 45) - 1``, below every non-negative key;
- NaN: one key above +inf (NaN sorts above every number, as in Polars).

The mapping uses only integer operations on the bits, so both compilers compute the same keys
and representatives, bit for bit: the per-event path with the scalar kernels
(``kernels.sketch_bucket`` and friends, via ``struct``), the batch plan with the expressions
here (NumPy views of the float columns' bits). A sketch is a count per key: merging is adding
counts, in any order. Documented in docs/semantics.md.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from featurepipe.kernels import SKETCH_NAN_KEY as NAN_KEY
from featurepipe.kernels import SKETCH_SHIFT as SHIFT
from featurepipe.kernels import sketch_bucket as bucket
from featurepipe.kernels import sketch_rank as rank
from featurepipe.kernels import sketch_representative as representative

__all__ = [
    "NAN_KEY",
    "SHIFT",
    "bucket",
    "bucket_expr",
    "rank",
    "representative",
    "representative_expr",
]
_ABS = (1 << 63) - 1


def _float_bits(s: pl.Series) -> pl.Series:
    """The int64 bits of each float (nulls as 0.0; the caller masks them)."""
    values = s.fill_null(0.0).cast(pl.Float64).to_numpy().astype(np.float64, copy=True)
    return pl.Series(s.name, values.view(np.int64))


def _bits_float(s: pl.Series) -> pl.Series:
    """The float of each int64 bit pattern (nulls as 0; the caller masks them)."""
    values = s.fill_null(0).cast(pl.Int64).to_numpy().astype(np.int64, copy=True)
    return pl.Series(s.name, values.view(np.float64))


def bucket_expr(x: pl.Expr) -> pl.Expr:
    """``bucket`` of a Float64 expression (null stays null)."""
    canonical = pl.when(x == 0.0).then(0.0).otherwise(x)  # -0.0 -> 0.0 (NaN kept)
    bits = canonical.map_batches(_float_bits, return_dtype=pl.Int64)
    magnitude = (bits & _ABS) // (1 << SHIFT)  # non-negative: // is >>
    return (
        pl.when(x.is_null())
        .then(None)
        .when(x.is_nan())
        .then(pl.lit(NAN_KEY, pl.Int64))
        .when(bits >= 0)
        .then(magnitude)
        .otherwise(-magnitude - 1)
        .cast(pl.Int64)
    )


def representative_expr(key: pl.Expr) -> pl.Expr:
    """``representative`` of an Int64 key expression (null stays null)."""
    magnitude = pl.when(key >= 0).then(key).otherwise(-key - 1) * (1 << SHIFT)
    value = magnitude.cast(pl.Int64).map_batches(_bits_float, return_dtype=pl.Float64)
    return (
        pl.when(key.is_null())
        .then(None)
        .when(key == NAN_KEY)
        .then(pl.lit(math.nan, pl.Float64))
        .when(key >= 0)
        .then(value)
        .otherwise(-value)
        .cast(pl.Float64)
    )
