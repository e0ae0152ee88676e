"""Statistics over seeds: mean ± sample std with n, and Welch's t-test for "is this difference noise?".

The test used to compare two results folders, per cell (both sides need n ≥ 2 seeds):
Welch's t = (m_B − m_A) / sqrt(s_A²/n_A + s_B²/n_B) with the Welch–Satterthwaite degrees of freedom,
two-sided p from Student's t distribution; "outside seed noise" when p < 0.05. With n = 1 on either side
there is no noise estimate and the report says so. Pure Python (no SciPy): the t distribution's tail is
the regularized incomplete beta function, evaluated by its continued fraction.
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
    t = delta / math.sqrt(se2)
    df = se2 ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    p = student_t_two_sided_p(t, df)
    return NoiseTest(delta, t, df, p, p < alpha)


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) for 0 ≤ x ≤ 1, a, b > 0 (continued fraction, using the symmetry I_x(a,b) = 1 − I_{1−x}(b,a))."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float, max_terms: int = 300, eps: float = 1e-15) -> float:
    """The continued fraction 1/(1+ d1/(1+ d2/(1+ …))) of the incomplete beta function, by Lentz's method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, max_terms + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result
