"""Statistics over seeds: mean ± sample std with n, and Welch's t-test for "is this difference noise?".

The test used to compare two results folders, per cell (both sides need n ≥ 2 seeds):
Welch's t = (m_B − m_A) / sqrt(s_A²/n_A + s_B²/n_B) with the Welch–Satterthwaite degrees of freedom,
two-sided p from Student's t distribution (``scipy.stats.ttest_ind_from_stats`` with ``equal_var=False``);
"outside seed noise" when p < 0.05. With n = 1 on either side there is no noise estimate and the report
says so. SciPy is imported on first use, so the report's other paths stay light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    """Mean over seeds, the sample standard deviation (ddof 1; None for one seed) and n."""

    n: int
    mean: float
    std: float | None


def summarize(values: Iterable[float | None]) -> Summary | None:
    """Summary of the non-missing values, or None when there are none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    mean = math.fsum(xs) / len(xs)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return Summary(len(xs), mean, std)


@dataclass(frozen=True)
class NoiseTest:
    """Outcome of comparing B against A: Δ = mean_B − mean_A and Welch's test when both n ≥ 2."""

    delta: float
    t: float | None
    df: float | None
    p: float | None
    outside_noise: bool | None  # None: no noise estimate (a side has n = 1)

    @property
    def verdict(self) -> str:
        if self.outside_noise is None:
            return "no noise estimate (n = 1)"
        return "outside seed noise" if self.outside_noise else "within seed noise"

    @property
    def text(self) -> str:
        if self.p is None:
            return self.verdict
        t = "∞" if math.isinf(self.t) else f"{self.t:.2f}"
        return f"{self.verdict} (Welch t = {t}, df = {self.df:.1f}, p = {self.p:.3g})"


def welch_test(a: Summary, b: Summary, alpha: float = ALPHA) -> NoiseTest:
    """Welch's two-sided t-test of mean_B − mean_A (see the module docstring)."""
    delta = b.mean - a.mean
    if a.n < 2 or b.n < 2 or a.std is None or b.std is None:
        return NoiseTest(delta, None, None, None, None)
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    se2 = va + vb
    if se2 == 0.0:  # every seed identical on both sides: any difference is outside the (zero) noise
        return NoiseTest(delta, math.inf if delta else 0.0, float(a.n + b.n - 2), 0.0 if delta else 1.0, delta != 0)
    from scipy.stats import ttest_ind_from_stats

    result = ttest_ind_from_stats(b.mean, b.std, b.n, a.mean, a.std, a.n, equal_var=False)
    t, p = float(result.statistic), float(result.pvalue)
    df = se2 ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))  # Welch–Satterthwaite, as SciPy uses
    return NoiseTest(delta, t, df, p, p < alpha)


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom (SciPy's survival function)."""
    if math.isinf(t):
        return 0.0
    from scipy.stats import t as student_t

    return float(2.0 * student_t.sf(abs(t), df))
