"""Small statistics helpers: nearest-rank percentiles in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


def summary_ms(values_ns: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(values_ns)
    return {
        "n": len(ordered),
        "p50": ms(percentile(ordered, 0.50)),
        "p90": ms(percentile(ordered, 0.90)),
        "p99": ms(percentile(ordered, 0.99)),
        "max": ms(ordered[-1]) if ordered else None,
    }


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
