"""One arm's estimate of a mean, built from sufficient statistics.

An :class:`Estimate` is what every comparison in :mod:`reconciler.stats.compare` consumes: a mean,
its standard error and the degrees of freedom of the reference distribution. Two builders:

* :func:`from_moments` for iid observations summarised as (count, sum, sum of squares);
* :func:`from_clusters` for a ratio metric over independent clusters (usually users), the
  delta-method estimator that keeps the standard error honest when one user contributes many
  correlated observations.

Neither raises on thin data: fewer than two observations (or clusters) give ``se = nan`` and
``df = 0``, which the caller reads as "not enough data". Invalid inputs (negative counts) raise
:class:`ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """One arm's estimate of a mean.

    ``df`` is the degrees of freedom of the Student-t reference distribution; ``math.inf`` means
    the standard normal. ``n`` is the number of observations, or of clusters for a ratio metric.
    """

    mean: float
    se: float
    df: float
    n: int


def from_moments(count: int, total: float, sum_sq: float) -> Estimate:
    """Estimate a mean from an iid sample's sufficient statistics.

    ``mean = total / count``; the unbiased sample variance with Bessel's correction,
    ``s^2 = (sum_sq - total * mean) / (count - 1)``; ``se = sqrt(s^2 / count)``; ``df = count - 1``
    (Casella & Berger 2002, *Statistical Inference*, 2nd ed., §5.2 and §5.3, Student's t for the
    standardised mean).

    The one-pass "textbook" variance loses about ``log10(mean^2 / s^2)`` decimal digits to
    cancellation (Chan, Golub & LeVeque 1983, "Algorithms for computing the sample variance:
    analysis and recommendations", *The American Statistician* 37(3)); that is the price of
    accepting (count, sum, sum of squares). A tiny negative variance left by rounding is clamped
    to 0.

    ``count < 2`` gives ``se = nan`` and ``df = 0`` (``mean`` is ``nan`` for ``count == 0``).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        return Estimate(mean=math.nan, se=math.nan, df=0.0, n=0)
    mean = total / count
    if count < 2:
        return Estimate(mean=mean, se=math.nan, df=0.0, n=count)
    variance = max((sum_sq - total * mean) / (count - 1), 0.0)
    return Estimate(mean=mean, se=math.sqrt(variance / count), df=float(count - 1), n=count)


def from_clusters(clusters: Sequence[tuple[float, float]], *, normal: bool = False) -> Estimate:
    """Estimate a ratio metric ``R = sum Y_b / sum N_b`` over independent clusters.

    Each cluster ``b`` (usually one user) contributes ``(Y_b, N_b)``: the sum of its values and
    its number of observations. Observations within a cluster may be correlated; clusters are
    independent. The delta-method (linearisation) variance of the ratio is

        Var(R) = sum_b (Y_b - R * N_b)^2 / (K * (K - 1) * Nbar^2),   Nbar = mean of N_b,

    over the ``K`` clusters with ``N_b > 0``: Cochran (1977), *Sampling Techniques*, 3rd ed.,
    ch. 6 (the ratio estimator, without the finite-population correction), and Deng, Knoblich &
    Lu (2018), "Applying the Delta Method in Metric Analytics: A Practical Guide with Novel
    Ideas", KDD '18. Algebraically it equals the delta-method expansion
    ``(s_Y^2 - 2 R s_YN + R^2 s_N^2) / (K * Nbar^2)`` with sample (co)variances; it is computed
    here from the residuals ``Y_b - R N_b``, which is numerically the more stable form.

    When every ``N_b = 1`` this reduces to :func:`from_moments` on the values ``Y_b``.
    ``df = K - 1`` (``math.inf`` with ``normal=True``, the usual large-sample reading of the
    delta method); ``n = K``. Clusters with ``N_b == 0`` carry no observations and are ignored;
    ``K < 2`` gives ``se = nan`` and ``df = 0``.
    """
    data = np.asarray(clusters, dtype=np.float64).reshape(-1, 2)
    values, sizes = data[:, 0], data[:, 1]
    if np.any(sizes < 0) or np.any(np.isnan(sizes)):
        raise ValueError("every cluster's number of observations N_b must be >= 0")
    keep = sizes > 0
    values, sizes = values[keep], sizes[keep]
    k = int(values.size)
    if k == 0:
        return Estimate(mean=math.nan, se=math.nan, df=0.0, n=0)
    ratio = float(values.sum() / sizes.sum())
    if k < 2:
        return Estimate(mean=ratio, se=math.nan, df=0.0, n=k)
    residuals = values - ratio * sizes
    mean_size = float(sizes.mean())
    variance = float(residuals @ residuals) / (k * (k - 1) * mean_size**2)
    return Estimate(
        mean=ratio,
        se=math.sqrt(variance),
        df=math.inf if normal else float(k - 1),
        n=k,
    )
