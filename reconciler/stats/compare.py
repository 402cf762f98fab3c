"""Treatment versus control: Welch's t-test on two means, the z-test on two proportions.

Both return a :class:`Comparison` with the absolute difference (confidence interval, two-sided
p-value) and the relative lift ``treatment / control - 1`` with a delta-method interval.

Degenerate data never raises:

* an arm without enough data (``se`` nan or ``df <= 0``, see
  :func:`reconciler.stats.estimates.from_moments`) gives nan for everything but the point
  estimates;
* a standard error of exactly 0 for the difference (both arms constant) is read literally: a
  zero difference has ``p_value = 1`` and ``statistic = 0``; a nonzero one has ``p_value = 0`` and
  ``statistic = ±inf``; the interval collapses to the point ``(d, d)``. (scipy returns nan here.)
* a control mean of 0 makes the lift undefined: ``relative`` and ``relative_ci`` are nan.

Invalid arguments (``level`` outside (0, 1), impossible counts) raise :class:`ValueError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats  # type: ignore[import-untyped]

from reconciler.stats.estimates import Estimate

_NAN_PAIR = (math.nan, math.nan)


@dataclass(frozen=True)
class Comparison:
    """Treatment versus control.

    ``difference`` is ``treatment.mean - control.mean``; ``ci`` its interval at ``level``;
    ``p_value`` two-sided; ``statistic`` the t (or z) statistic; ``df`` the degrees of freedom
    (``math.inf`` for the normal). ``relative`` is ``treatment.mean / control.mean - 1`` with its
    delta-method interval ``relative_ci`` at the same ``level``.
    """

    difference: float
    ci: tuple[float, float]
    p_value: float
    statistic: float
    df: float
    relative: float
    relative_ci: tuple[float, float]
    level: float


def welch(treatment: Estimate, control: Estimate, level: float = 0.95) -> Comparison:
    """Welch's unequal-variance t-test of ``treatment.mean - control.mean``.

    ``se_d = sqrt(se_1^2 + se_0^2)`` and ``t = d / se_d`` (Welch 1947, "The generalization of
    'Student's' problem when several different population variances are involved", *Biometrika*
    34(1/2)). Degrees of freedom by the Welch-Satterthwaite approximation
    ``(se_1^2 + se_0^2)^2 / (se_1^4 / df_1 + se_0^4 / df_0)`` (Satterthwaite 1946, "An approximate
    distribution of estimates of variance components", *Biometrics Bulletin* 2(6)). An arm with
    ``df = inf`` contributes no term to the denominator (its limit); both infinite gives the
    normal. Two-sided p-value ``2 * P(T_df > |t|)``; interval ``d ± t_{(1+level)/2, df} * se_d``.
    Matches ``scipy.stats.ttest_ind_from_stats(..., equal_var=False)``.

    The lift uses the same critical value; see :func:`_relative`.
    """
    _check_level(level)
    difference = treatment.mean - control.mean
    relative = _lift(treatment.mean, control.mean)
    if not (_usable(treatment) and _usable(control)):
        return _undetermined(difference, relative, level)
    var_t, var_c = treatment.se**2, control.se**2
    df = _welch_satterthwaite(var_t, treatment.df, var_c, control.df)
    critical = _critical(level, df)
    statistic, p_value = _two_sided(difference, math.sqrt(var_t + var_c), df)
    half = critical * math.sqrt(var_t + var_c)
    return Comparison(
        difference=difference,
        ci=(difference - half, difference + half),
        p_value=p_value,
        statistic=statistic,
        df=df,
        relative=relative,
        relative_ci=_relative(treatment.mean, var_t, control.mean, var_c, critical),
        level=level,
    )


def two_proportions(
    successes_t: int, n_t: int, successes_c: int, n_c: int, level: float = 0.95
) -> Comparison:
    """Two-proportion z-test of ``p_t - p_c``.

    The p-value comes from the pooled-variance statistic
    ``z = (p_t - p_c) / sqrt(p (1 - p) (1/n_t + 1/n_c))``, ``p = (x_t + x_c) / (n_t + n_c)``: the
    score test of equal proportions, whose square is Pearson's X^2 for the 2x2 table (Agresti
    2013, *Categorical Data Analysis*, 3rd ed., ch. 3); identical to
    ``statsmodels.stats.proportion.proportions_ztest``. The interval is the unpooled Wald
    interval ``d ± z_{(1+level)/2} sqrt(p_t (1-p_t)/n_t + p_c (1-p_c)/n_c)``, method 1 of
    Newcombe (1998), "Interval estimation for the difference between independent proportions:
    comparison of eleven methods", *Statistics in Medicine* 17(8); identical to
    ``confint_proportions_2indep(..., method='wald', compare='diff')``. Pooling under the null
    is right for the test; an interval must not assume the null, hence the two variances.
    ``df = inf``. The lift uses the unpooled variances and the same critical value.

    An arm with ``n = 0`` gives nan (not enough data).
    """
    _check_level(level)
    for name, successes, n in (("treatment", successes_t, n_t), ("control", successes_c, n_c)):
        if n < 0 or not 0 <= successes <= max(n, 0):
            raise ValueError(f"{name}: need 0 <= successes <= n, got {successes} of {n}")
    if n_t == 0 or n_c == 0:
        p_t = successes_t / n_t if n_t else math.nan
        p_c = successes_c / n_c if n_c else math.nan
        return _undetermined(p_t - p_c, _lift(p_t, p_c), level)
    p_t, p_c = successes_t / n_t, successes_c / n_c
    difference = p_t - p_c
    pooled = (successes_t + successes_c) / (n_t + n_c)
    statistic, p_value = _two_sided(
        difference, math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c)), math.inf
    )
    var_t, var_c = p_t * (1 - p_t) / n_t, p_c * (1 - p_c) / n_c
    critical = _critical(level, math.inf)
    half = critical * math.sqrt(var_t + var_c)
    return Comparison(
        difference=difference,
        ci=(difference - half, difference + half),
        p_value=p_value,
        statistic=statistic,
        df=math.inf,
        relative=_lift(p_t, p_c),
        relative_ci=_relative(p_t, var_t, p_c, var_c, critical),
        level=level,
    )


def _relative(
    mean_t: float, var_t: float, mean_c: float, var_c: float, critical: float
) -> tuple[float, float]:
    """Delta-method interval for the lift ``m_t / m_c - 1`` of two independent means.

    First-order Taylor expansion of ``g(m_t, m_c) = m_t / m_c``:
    ``Var(m_t / m_c) ≈ se_t^2 / m_c^2 + m_t^2 se_c^2 / m_c^4`` (no covariance term: the arms are
    independent). Deng, Knoblich & Lu (2018), "Applying the Delta Method in Metric Analytics",
    KDD '18 (the percent-change example); Casella & Berger (2002), *Statistical Inference*,
    2nd ed., §5.5.4 (the delta method).
    """
    if mean_c == 0 or math.isnan(mean_c):
        return _NAN_PAIR
    lift = mean_t / mean_c - 1
    se = math.sqrt(var_t / mean_c**2 + mean_t**2 * var_c / mean_c**4)
    return (lift - critical * se, lift + critical * se)


def _lift(mean_t: float, mean_c: float) -> float:
    return math.nan if mean_c == 0 or math.isnan(mean_c) else mean_t / mean_c - 1


def _usable(estimate: Estimate) -> bool:
    return not math.isnan(estimate.se) and estimate.df > 0


def _welch_satterthwaite(var_t: float, df_t: float, var_c: float, df_c: float) -> float:
    """Welch-Satterthwaite degrees of freedom; an infinite ``df`` drops its term (its limit)."""
    numerator = (var_t + var_c) ** 2
    denominator = var_t**2 / df_t + var_c**2 / df_c  # x / inf == 0.0
    if denominator > 0:
        return numerator / denominator
    if numerator > 0:
        return math.inf  # every arm with variance has df = inf: the normal
    return df_t + df_c  # both variances 0: the df is immaterial (the interval is a point)


def _critical(level: float, df: float) -> float:
    """The two-sided critical value ``q_{(1+level)/2}`` of Student's t (normal for inf df)."""
    quantile = (1 + level) / 2
    if math.isinf(df):
        return float(stats.norm.ppf(quantile))
    return float(stats.t.ppf(quantile, df))


def _two_sided(difference: float, se: float, df: float) -> tuple[float, float]:
    """The statistic ``d / se`` and its two-sided p-value; ``se == 0`` read literally."""
    if se == 0:
        if difference == 0:
            return 0.0, 1.0
        return math.copysign(math.inf, difference), 0.0
    statistic = difference / se
    if math.isinf(df):
        return statistic, float(2 * stats.norm.sf(abs(statistic)))
    return statistic, float(2 * stats.t.sf(abs(statistic), df))


def _undetermined(difference: float, relative: float, level: float) -> Comparison:
    return Comparison(
        difference=difference,
        ci=_NAN_PAIR,
        p_value=math.nan,
        statistic=math.nan,
        df=math.nan,
        relative=relative,
        relative_ci=_NAN_PAIR,
        level=level,
    )


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
