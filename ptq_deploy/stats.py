"""Summary statistics carried with every measured figure (n and spread, never a bare number)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel


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
