"""Statistics shared by every measurement: ``Summary`` (n and spread with every figure, never a bare number),
the bootstrap over documents (paired for a difference) and the 95% normal quantile."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

Z95 = 1.959963984540054  # the normal distribution's 97.5% quantile: a 95% interval is ± Z95 standard errors


class Summary(BaseModel):
    n: int
    mean: float
    stdev: float
    median: float
    p90: float
    p99: float
    min: float
    max: float
    unit: str = ""

    @classmethod
    def of(cls, values: Sequence[float], unit: str = "") -> "Summary":
        import numpy as np

        if len(values) == 0:
            nan = math.nan
            return cls(n=0, mean=nan, stdev=nan, median=nan, p90=nan, p99=nan, min=nan, max=nan, unit=unit)
        a = np.asarray(values, dtype=float)
        return cls(n=int(a.size), mean=float(a.mean()), stdev=float(a.std(ddof=1)) if a.size > 1 else 0.0,
                   median=float(np.percentile(a, 50)), p90=float(np.percentile(a, 90)),
                   p99=float(np.percentile(a, 99)), min=float(a.min()), max=float(a.max()), unit=unit)

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.stdev:.2g} {self.unit} (n={self.n}, p50 {self.median:.4g}, p99 {self.p99:.4g})"

    def ci95_half_width(self) -> float:
        """Half-width of the t-interval (95%) of the mean; inf below n = 2."""
        if self.n < 2:
            return math.inf
        from scipy.stats import t

        return float(t.ppf(0.975, self.n - 1) * self.stdev / math.sqrt(self.n))

    def ci95(self) -> tuple[float, float]:
        """The t-interval (95%) of the mean; the mean itself below n = 2."""
        h = self.ci95_half_width() if self.n > 1 else 0.0
        return (self.mean - h, self.mean + h)


def paired_bootstrap(base: Sequence[Any], quant: Sequence[Any], agg: Callable[[Sequence[Any]], float],
                     iters: int = 1000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Bootstrap of ``agg(quant) - agg(base)`` resampling the same documents on both sides.

    Returns ``(stderr, (ci95_low, ci95_high))``; deterministic for a given seed.
    """
    import numpy as np

    if len(base) != len(quant) or len(base) < 2:
        raise ValueError("paired bootstrap needs two equally long per-sample lists (n >= 2)")
    n = len(base)
    idx = np.random.default_rng(seed).integers(0, n, size=(iters, n))
    deltas = np.array([agg([quant[i] for i in row]) - agg([base[i] for i in row]) for row in idx.tolist()])
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return float(deltas.std(ddof=1)), (float(lo), float(hi))


def bootstrap_stderr(values: Sequence[Any], agg: Callable[[Sequence[Any]], float], iters: int = 1000,
                     seed: int = 0) -> float:
    """Bootstrap stderr of ``agg(values)`` over documents (for aggregates lm-eval gives no stderr for,
    e.g. weighted perplexity); deterministic for a given seed."""
    import numpy as np

    idx = np.random.default_rng(seed).integers(0, len(values), size=(iters, len(values)))
    return float(np.std([agg([values[i] for i in row]) for row in idx.tolist()], ddof=1))
