"""Scalar kernels: the audited, per-value statement of featurepipe's semantics.

``docs/semantics.md`` describes the rules in prose; this module implements them for the per-event
path, and ``featurepipe.compile.polars_rows`` / ``polars_aggs`` build the same arithmetic from
Polars expressions. Every function here propagates ``None`` (null) unless documented otherwise.
The rules follow IEEE-754 binary64 and Polars' conventions where those are well defined
(NaN compares equal to NaN and greater than every number; integer arithmetic wraps).
"""

from __future__ import annotations

import math
import struct
from bisect import bisect_right
from typing import Any

import xxhash

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
_TWO64 = 2**64

# Exact accumulation of floats: each value is held as a fixed-point integer of FRAC_BITS
# fractional bits (round half to even). Magnitudes at or above BIG saturate to +-inf.
FRAC_BITS = 40
SCALE = float(2**FRAC_BITS)
INV_SCALE = 2.0**-FRAC_BITS
BIG = 2.0**52

NULL_CODE = 0  # encode(): code of a null input
OOV_CODE = 1  # encode(): code of a value outside the frozen vocabulary
FIRST_VOCAB_CODE = 2

STRIP_CHARS = " \t\n\r\x0b\x0c"
US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S


def wrap(x: int) -> int:
    """Two's-complement wrap to int64, as Polars' Int64 arithmetic does."""
    if INT_MIN <= x <= INT_MAX:
        return x
    return (x - INT_MIN) % _TWO64 + INT_MIN


# ---- arithmetic -------------------------------------------------------------------------------


def fdiv(a: float, b: float) -> float:
    """IEEE division (Python raises on zero; IEEE gives inf or NaN)."""
    try:
        return a / b
    except ZeroDivisionError:
        if a != a or a == 0.0:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def ffloor(a: float) -> float:
    if not math.isfinite(a):
        return a
    r = float(math.floor(a))
    return math.copysign(r, a) if r == 0.0 else r


def fceil(a: float) -> float:
    if not math.isfinite(a):
        return a
    r = float(math.ceil(a))
    return math.copysign(r, a) if r == 0.0 else r


def fround(a: float, decimals: int) -> float:
    """Round half to even at ``decimals`` places: round(a * 10**d) / 10**d in binary64."""
    s = 10.0**decimals
    x = a * s
    if not math.isfinite(x):
        return x / s if decimals else x
    r = float(round(x))
    if r == 0.0:
        r = math.copysign(0.0, x)
    return r / s if decimals else r


def ffloordiv(a: float, b: float) -> float:
    return ffloor(fdiv(a, b))


def fmod(a: float, b: float) -> float:
    """a - b * floor(a / b), each step in binary64."""
    return a - b * ffloor(fdiv(a, b))


def ifloordiv(a: int, b: int) -> int | None:
    return None if b == 0 else wrap(a // b)


def imod(a: int, b: int) -> int | None:
    return None if b == 0 else a % b


def fsqrt(a: float) -> float:
    return math.nan if a < 0.0 or a != a else math.sqrt(a)


def flog(a: float) -> float:
    if a != a or a < 0.0:
        return math.nan
    if a == 0.0:
        return -math.inf
    return math.log(a)


def flog1p(a: float) -> float:
    if a != a or a < -1.0:
        return math.nan
    if a == -1.0:
        return -math.inf
    return math.log1p(a)


def fexp(a: float) -> float:
    try:
        return math.exp(a)
    except OverflowError:
        return math.inf


def float_to_int(a: float) -> int | None:
    if not math.isfinite(a) or a >= 9.223372036854775807e18 or a < -9.223372036854775808e18:
        return None
    return int(a)


# ---- comparison (total order on floats: NaN equals NaN and is greater than every number) -------


def _key(a: Any) -> Any:
    if isinstance(a, float) and a != a:
        return (1, 0.0)
    if isinstance(a, float):
        return (0, a)
    return a


def cmp(op: str, a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    if a == a and b == b:  # fast path: no NaN, IEEE order is the total order here
        if op == "eq":
            return bool(a == b)
        if op == "ne":
            return bool(a != b)
        if op == "lt":
            return bool(a < b)
        if op == "le":
            return bool(a <= b)
        if op == "gt":
            return bool(a > b)
        return bool(a >= b)
    if isinstance(a, float) or isinstance(b, float):
        ka, kb = _key(float(a)), _key(float(b))
    else:
        ka, kb = a, b
    if op == "eq":
        return bool(ka == kb)
    if op == "ne":
        return bool(ka != kb)
    if op == "lt":
        return bool(ka < kb)
    if op == "le":
        return bool(ka <= kb)
    if op == "gt":
        return bool(ka > kb)
    return bool(ka >= kb)


def and3(a: bool | None, b: bool | None) -> bool | None:
    """Kleene AND: false wins over null."""
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


def or3(a: bool | None, b: bool | None) -> bool | None:
    """Kleene OR: true wins over null."""
    if a is True or b is True:
        return True
    if a is None or b is None:
        return None
    return False


def fclip(a: float | int, lo: float | int, hi: float | int) -> float | int:
    if isinstance(a, float) and a != a:
        return a
    if cmp("lt", a, lo):
        return lo
    if cmp("gt", a, hi):
        return hi
    return a


# ---- strings ----------------------------------------------------------------------------------


def slice_str(a: str, offset: int, length: int | None) -> str:
    return a[offset:] if length is None else a[offset : offset + length]


# ---- datetimes: int64 epoch microseconds, UTC ---------------------------------------------------


def civil_from_days(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y, m, d)


def dt_part(part: str, us: int) -> int:
    if part == "hour":
        return (us // 3_600_000_000) % 24
    if part == "minute":
        return (us // 60_000_000) % 60
    if part == "epoch_seconds":
        return us // US_PER_S
    days = us // US_PER_DAY
    if part == "day_of_week":
        return (days + 3) % 7 + 1  # ISO: Monday=1 .. Sunday=7; 1970-01-01 was a Thursday
    y, m, d = civil_from_days(days)
    return {"year": y, "month": m, "day": d}[part]


def truncate_us(us: int, every_us: int) -> int:
    return us - us % every_us


# ---- categoricals ---------------------------------------------------------------------------


def hash_bucket(value: str | int, buckets: int) -> int:
    """xxh64 (seed 0) of the UTF-8 text of the value, modulo ``buckets``."""
    text = value if isinstance(value, str) else str(value)
    return int(xxhash.xxh64_intdigest(text.encode("utf-8")) % buckets)


def bucketize(a: float | int, boundaries: tuple[float, ...]) -> int:
    """Number of boundaries b with a >= b (NaN is above every boundary; ints compare as floats).

    ``boundaries`` are sorted and NaN-free (checked at definition time), so this is a bisection.
    """
    x = float(a)
    if x != x:
        return len(boundaries)
    return bisect_right(boundaries, x)


# ---- exact accumulation -----------------------------------------------------------------------


def to_fixed(x: float) -> int | str:
    """Fixed-point integer of x, or a saturation flag: 'nan', '+', '-'."""
    if x != x:
        return "nan"
    if x >= BIG:
        return "+"
    if x <= -BIG:
        return "-"
    return round(x * SCALE)


def decayed_fixed(x: float, age: int, half_life: float) -> int | str:
    """``to_fixed`` of x * 2**(-age / half_life): age (T - ts, micros) and half_life (micros,
    as a float) in binary64, the weight by the C library's pow (both engines call it)."""
    return to_fixed(x * 2.0 ** (-(float(age) / half_life)))


def finalize_float_sum(total: int, pos: int, neg: int, nan: int) -> float:
    if nan or (pos and neg):
        return math.nan
    if pos:
        return math.inf
    if neg:
        return -math.inf
    return float(total) * INV_SCALE


def finalize_var(n: int, s1: float, s2: float, flags: int, ddof: int = 1) -> float | None:
    """Sample variance from exact sums, finalized in a fixed sequence of binary64 operations."""
    if n <= ddof:
        return None
    if flags:
        return math.nan
    nf = float(n)
    m2 = s2 - s1 * (s1 / nf)
    if m2 != m2 or m2 <= 0.0:
        m2 = 0.0
    return m2 / float(n - ddof)


def finalize_moment(n: int, s1: int, s2: int, flags: int, std: bool) -> float | None:
    """var (or std: its square root, NaN kept) from the exact fixed-point sums of x and x*x:
    ``finalize_var`` of the sums scaled to floats."""
    var = finalize_var(n, float(s1) * INV_SCALE, float(s2) * INV_SCALE, flags)
    if var is None or not std:
        return var
    return math.sqrt(var) if var == var else var


def distinct_key(x: float) -> float | str:
    """Key of a float for count_distinct: all NaNs are one value, -0.0 is 0.0."""
    if x != x:
        return "nan"
    return x + 0.0 if x == 0.0 else x


# -- windows ------------------------------------------------------------------------------------
# A query at T sees an event of a window (w, h) (h = 1 for a sliding window, else the hop,
# which divides w) when window_start(T) <= ts < T. The start, T // h * h - w, moves in steps
# of h. Equivalently the event stays visible while T <= last_visible(ts): ts >= T // h * h - w
# <=> T // h <= (ts + w) // h <=> T < ((ts + w) // h + 1) * h. Floor division throughout.


def window_start(t: int, w: int, h: int) -> int:
    """The oldest event time a query at ``t`` sees in the window ``w`` with hop ``h``."""
    return t // h * h - w


def last_visible(ts: int, w: int, h: int) -> int:
    """The latest query time at which an event at ``ts`` is inside the window (``w``, ``h``)."""
    return ((ts + w) // h + 1) * h - 1


# -- approx_percentile's sketch (featurepipe.ir.sketch states the mapping) ----------------------
SKETCH_MANTISSA_BITS = 7
SKETCH_SHIFT = 52 - SKETCH_MANTISSA_BITS
_SKETCH_ABS = (1 << 63) - 1
SKETCH_INF_KEY = 0x7FF << SKETCH_MANTISSA_BITS
SKETCH_NAN_KEY = SKETCH_INF_KEY + 1


def sketch_bucket(x: float) -> int:
    """The key of a non-null float (ints are converted with ``float()`` first)."""
    if x != x:
        return SKETCH_NAN_KEY
    bits: int = struct.unpack("<q", struct.pack("<d", x))[0]
    if bits >= 0 or x == 0.0:  # -0.0 is 0.0
        return (bits & _SKETCH_ABS) >> SKETCH_SHIFT
    return -((bits & _SKETCH_ABS) >> SKETCH_SHIFT) - 1


def sketch_representative(key: int) -> float:
    """The value reported for a bucket: its values rounded toward zero to 7 mantissa bits."""
    if key == SKETCH_NAN_KEY:
        return math.nan
    magnitude = (key if key >= 0 else -key - 1) << SKETCH_SHIFT
    value: float = struct.unpack("<d", struct.pack("<q", magnitude))[0]
    return value if key >= 0 else -value


def sketch_rank(q: float, n: int) -> int:
    """The nearest rank (1-based) of the q-quantile of n values: ceil(q * n), at least 1."""
    return max(1, math.ceil(q * n))
