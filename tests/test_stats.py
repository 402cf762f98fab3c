"""The experiment statistics agree with scipy and statsmodels, and the sequential test keeps its
promise under peeking."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from reconciler.stats import (
    SRM_THRESHOLD,
    Estimate,
    anytime_p_value,
    confidence_sequence,
    from_clusters,
    from_moments,
    holm,
    sample_ratio,
    tuning,
    two_proportions,
    welch,
)

REL = 1e-9
SEEDS = range(12)
LEVELS = (0.8, 0.9, 0.95, 0.99)


def _moments(values: np.ndarray) -> Estimate:
    return from_moments(int(values.size), float(values.sum()), float(values @ values))


def _arms(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_t, n_c = rng.integers(5, 2000, size=2)
    mean_c = rng.uniform(-20, 20)
    treatment = rng.normal(mean_c + rng.normal(0, 0.5), rng.uniform(0.5, 5), size=n_t)
    control = rng.normal(mean_c, rng.uniform(0.5, 5), size=n_c)
    return treatment, control


# --- estimates -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_from_moments_matches_numpy(seed: int) -> None:
    values, _ = _arms(seed)
    estimate = _moments(values)
    assert estimate.mean == pytest.approx(values.mean(), rel=REL)
    assert estimate.se == pytest.approx(values.std(ddof=1) / math.sqrt(values.size), rel=REL)
    assert estimate.df == values.size - 1
    assert estimate.n == values.size


def test_from_moments_needs_two_observations() -> None:
    one = from_moments(1, 3.0, 9.0)
    assert one.mean == 3.0
    assert math.isnan(one.se)
    assert one.df == 0
    none = from_moments(0, 0.0, 0.0)
    assert math.isnan(none.mean)
    assert math.isnan(none.se)
    assert none.n == 0
    with pytest.raises(ValueError, match="count"):
        from_moments(-1, 0.0, 0.0)


def test_from_moments_clamps_rounding_to_zero_variance() -> None:
    value = 0.1
    estimate = from_moments(3, 3 * value, 3 * value * value)  # sum_sq - total*mean may be < 0
    assert estimate.se == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_from_clusters_of_single_observations_is_from_moments(seed: int) -> None:
    values, _ = _arms(seed)
    clusters = [(float(v), 1.0) for v in values]
    ratio, iid = from_clusters(clusters), _moments(values)
    assert ratio.mean == pytest.approx(iid.mean, rel=REL)
    assert ratio.se == pytest.approx(iid.se, rel=REL)
    assert ratio.df == iid.df
    assert ratio.n == iid.n


@pytest.mark.parametrize("seed", SEEDS)
def test_from_clusters_matches_the_delta_method(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 500))
    sizes = rng.poisson(rng.uniform(0.5, 8), size=k).astype(float)
    user_effect = rng.normal(0, 2, size=k)  # correlates a user's observations
    sums = np.array(
        [rng.normal(5 + u, 1, size=int(s)).sum() for u, s in zip(user_effect, sizes, strict=True)]
    )
    estimate = from_clusters(list(zip(sums.tolist(), sizes.tolist(), strict=True)))

    used = sizes > 0  # empty clusters carry no observations
    y, m = sums[used], sizes[used]
    kept = int(used.sum())
    ratio = y.mean() / m.mean()
    cov = np.cov(y, m, ddof=1)
    variance = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (kept * m.mean() ** 2)
    assert estimate.mean == pytest.approx(ratio, rel=REL)
    assert estimate.se == pytest.approx(math.sqrt(variance), rel=REL)
    assert estimate.df == kept - 1
    assert estimate.n == kept
    assert from_clusters(list(zip(y.tolist(), m.tolist(), strict=True)), normal=True).df == math.inf


def test_from_clusters_edge_cases() -> None:
    assert from_clusters([]).n == 0
    assert math.isnan(from_clusters([]).mean)
    single = from_clusters([(4.0, 2.0), (7.0, 0.0)])  # the empty cluster is ignored
    assert single.mean == 2.0
    assert math.isnan(single.se)
    assert single.df == 0
    assert single.n == 1
    with pytest.raises(ValueError, match="N_b"):
        from_clusters([(1.0, -1.0), (2.0, 1.0)])


# --- compare -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("level", LEVELS)
def test_welch_matches_scipy(seed: int, level: float) -> None:
    treatment, control = _arms(seed)
    result = welch(_moments(treatment), _moments(control), level=level)

    by_stats = sps.ttest_ind_from_stats(
        treatment.mean(),
        treatment.std(ddof=1),
        treatment.size,
        control.mean(),
        control.std(ddof=1),
        control.size,
        equal_var=False,
    )
    raw = sps.ttest_ind(treatment, control, equal_var=False)
    low, high = raw.confidence_interval(confidence_level=level)
    assert result.statistic == pytest.approx(by_stats.statistic, rel=REL)
    assert result.p_value == pytest.approx(by_stats.pvalue, rel=REL)
    assert result.df == pytest.approx(raw.df, rel=REL)
    assert result.ci == (pytest.approx(low, rel=REL), pytest.approx(high, rel=REL))
    assert result.difference == pytest.approx(treatment.mean() - control.mean(), rel=REL)
    assert result.level == level

    m_t, m_c = treatment.mean(), control.mean()
    v_t, v_c = treatment.var(ddof=1) / treatment.size, control.var(ddof=1) / control.size
    lift = m_t / m_c - 1
    half = sps.t.ppf((1 + level) / 2, raw.df) * math.sqrt(v_t / m_c**2 + m_t**2 * v_c / m_c**4)
    assert result.relative == pytest.approx(lift, rel=REL)
    assert result.relative_ci == (
        pytest.approx(lift - half, rel=REL),
        pytest.approx(lift + half, rel=REL),
    )


def test_welch_with_normal_arms_takes_the_limit() -> None:
    normal = Estimate(mean=1.2, se=0.3, df=math.inf, n=1000)
    student = Estimate(mean=1.0, se=0.2, df=9.0, n=10)
    mixed = welch(normal, student)
    assert mixed.df == pytest.approx((0.3**2 + 0.2**2) ** 2 / (0.2**4 / 9), rel=REL)

    both = welch(normal, Estimate(mean=1.0, se=0.2, df=math.inf, n=1000))
    z = 0.2 / math.sqrt(0.3**2 + 0.2**2)
    assert both.df == math.inf
    assert both.statistic == pytest.approx(z, rel=REL)
    assert both.p_value == pytest.approx(2 * sps.norm.sf(z), rel=REL)
    half = sps.norm.ppf(0.975) * math.sqrt(0.3**2 + 0.2**2)
    assert both.ci == (pytest.approx(0.2 - half, rel=REL), pytest.approx(0.2 + half, rel=REL))


def test_welch_without_enough_data_is_nan() -> None:
    result = welch(from_moments(1, 5.0, 25.0), from_moments(10, 40.0, 170.0))
    assert result.difference == 1.0
    assert math.isnan(result.p_value)
    assert math.isnan(result.statistic)
    assert all(math.isnan(bound) for bound in result.ci)


def test_welch_with_zero_variance_reads_se_zero_literally() -> None:
    constant = from_moments(10, 20.0, 40.0)  # ten 2.0s
    same = welch(constant, constant)
    assert (same.difference, same.p_value, same.statistic, same.ci) == (0.0, 1.0, 0.0, (0.0, 0.0))

    higher = welch(from_moments(10, 30.0, 90.0), constant)  # ten 3.0s against ten 2.0s
    assert higher.difference == 1.0
    assert higher.p_value == 0.0
    assert higher.statistic == math.inf
    assert higher.ci == (1.0, 1.0)
    assert higher.relative == pytest.approx(0.5)
    assert higher.relative_ci == (pytest.approx(0.5), pytest.approx(0.5))


def test_a_zero_control_mean_leaves_the_lift_undefined() -> None:
    rng = np.random.default_rng(7)
    result = welch(_moments(rng.normal(1, 1, size=50)), Estimate(0.0, 0.1, 49.0, 50))
    assert math.isnan(result.relative)
    assert all(math.isnan(bound) for bound in result.relative_ci)
    assert not math.isnan(result.p_value)
    rates = two_proportions(5, 100, 0, 100)
    assert math.isnan(rates.relative)
    assert all(math.isnan(bound) for bound in rates.relative_ci)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("level", LEVELS)
def test_two_proportions_matches_statsmodels(seed: int, level: float) -> None:
    rng = np.random.default_rng(seed)
    n_t, n_c = (int(n) for n in rng.integers(20, 100_000, size=2))
    rate = rng.uniform(0.01, 0.9)
    x_t = int(rng.binomial(n_t, min(rate * rng.uniform(0.8, 1.2), 1.0)))
    x_c = int(rng.binomial(n_c, rate))
    result = two_proportions(x_t, n_t, x_c, n_c, level=level)

    z, p = proportions_ztest([x_t, x_c], [n_t, n_c])
    low, high = confint_proportions_2indep(
        x_t, n_t, x_c, n_c, method="wald", compare="diff", alpha=1 - level
    )
    assert result.statistic == pytest.approx(z, rel=REL)
    assert result.p_value == pytest.approx(p, rel=REL)
    assert result.ci == (pytest.approx(low, rel=REL), pytest.approx(high, rel=REL))
    assert result.df == math.inf

    p_t, p_c = x_t / n_t, x_c / n_c
    v_t, v_c = p_t * (1 - p_t) / n_t, p_c * (1 - p_c) / n_c
    half = sps.norm.ppf((1 + level) / 2) * math.sqrt(v_t / p_c**2 + p_t**2 * v_c / p_c**4)
    assert result.relative == pytest.approx(p_t / p_c - 1, rel=REL)
    assert result.relative_ci == (
        pytest.approx(p_t / p_c - 1 - half, rel=REL),
        pytest.approx(p_t / p_c - 1 + half, rel=REL),
    )


def test_two_proportions_edge_cases() -> None:
    none = two_proportions(0, 1000, 0, 1000)
    assert (none.difference, none.p_value, none.statistic) == (0.0, 1.0, 0.0)
    empty = two_proportions(0, 0, 3, 10)
    assert math.isnan(empty.p_value)
    assert math.isnan(empty.difference)
    with pytest.raises(ValueError, match="treatment"):
        two_proportions(11, 10, 3, 10)
    with pytest.raises(ValueError, match="level"):
        two_proportions(1, 10, 3, 10, level=1.0)


# --- srm -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_sample_ratio_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    names = [f"v{i}" for i in range(k)]
    weights = dict(zip(names, rng.uniform(0.1, 1, size=k).tolist(), strict=True))
    probabilities = np.array(list(weights.values())) * rng.uniform(0.97, 1.03, size=k)
    observed = rng.multinomial(int(rng.integers(100, 50_000)), probabilities / probabilities.sum())
    counts = dict(zip(names, (int(c) for c in observed), strict=True))
    result = sample_ratio(counts, weights)

    total_weight = sum(weights.values())
    expected = [observed.sum() * weights[name] / total_weight for name in names]
    reference = sps.chisquare(observed, expected)
    assert result.chi2 == pytest.approx(reference.statistic, rel=REL)
    assert result.p_value == pytest.approx(reference.pvalue, rel=REL)
    assert result.df == k - 1
    assert list(result.expected.values()) == pytest.approx(expected, rel=REL)
    assert result.mismatch == (reference.pvalue < SRM_THRESHOLD)


def test_sample_ratio_flags_a_45_55_split_but_not_noise() -> None:
    weights = {"control": 50.0, "treatment": 50.0}
    assert sample_ratio({"control": 4_500, "treatment": 5_500}, weights).mismatch
    fine = sample_ratio({"control": 5_010, "treatment": 4_990}, weights)
    assert not fine.mismatch
    assert fine.chi2 == pytest.approx(0.04)


def test_sample_ratio_edge_cases() -> None:
    empty = sample_ratio({}, {"a": 0.5, "b": 0.5})
    assert (empty.chi2, empty.p_value, empty.mismatch) == (0.0, 1.0, False)
    assert dict(empty.counts) == {"a": 0, "b": 0}

    # the zero-weight holdout is left out; a weighted variant nobody reached counts as 0
    result = sample_ratio({"a": 480, "holdout": 999}, {"a": 1.0, "b": 1.0, "holdout": 0.0})
    assert dict(result.counts) == {"a": 480, "b": 0}
    assert dict(result.expected) == {"a": 240.0, "b": 240.0}
    assert result.df == 1
    assert result.mismatch

    single = sample_ratio({"a": 10}, {"a": 1.0})
    assert (single.chi2, single.df, single.p_value) == (0.0, 0, 1.0)
    with pytest.raises(ValueError, match="weights"):
        sample_ratio({"a": 1}, {"a": -1.0, "b": 2.0})
    with pytest.raises(ValueError, match="counts"):
        sample_ratio({"a": -1}, {"a": 1.0, "b": 2.0})


# --- multiple ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_holm_matches_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 40))
    p = rng.choice([rng.uniform(0, 1), rng.uniform(0, 0.05)], size=m)  # ties, small and large
    p = np.where(rng.uniform(size=m) < 0.5, p, rng.uniform(0, 1, size=m))
    adjusted = holm(p.tolist())
    assert adjusted == pytest.approx(multipletests(p, method="holm")[1].tolist(), rel=1e-12)
    assert all(0 <= a <= 1 for a in adjusted)
    by_rank = [adjusted[i] for i in np.argsort(p, kind="stable")]
    assert by_rank == sorted(by_rank)


def test_holm_edge_cases() -> None:
    assert holm([]) == []
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.9, 0.8]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="p-values"):
        holm([0.5, math.nan])


# --- sequential ----------------------------------------------------------------------------------


def test_tuning_is_the_published_closed_form_and_nearly_optimal() -> None:
    alpha = 0.05
    assert tuning(1000, 0.95) == pytest.approx(
        math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / 1000), rel=REL
    )
    target = 5000
    best = tuning(target, 0.95)
    widths = [
        confidence_sequence(0.0, 1.0, target, 0.95, rho)[1] for rho in np.geomspace(1e-4, 1, 4001)
    ]
    assert confidence_sequence(0.0, 1.0, target, 0.95, best)[1] <= min(widths) * (1 + 1e-4)
    with pytest.raises(ValueError, match="target_n"):
        tuning(0, 0.95)


@pytest.mark.parametrize("level", LEVELS)
def test_confidence_sequence_is_wider_than_the_fixed_interval_everywhere(level: float) -> None:
    z = sps.norm.ppf((1 + level) / 2)
    for target in (100, 1_000, 100_000):
        rho = tuning(target, level)
        for n in np.unique(np.geomspace(1, 10**8, 200).astype(int)):
            se = 3.0 / math.sqrt(n)
            low, high = confidence_sequence(0.25, se, int(n), level, rho)
            assert high - 0.25 == pytest.approx(0.25 - low, rel=1e-12)
            assert high - 0.25 > z * se


def test_anytime_p_value_is_the_exclusion_threshold() -> None:
    rng = np.random.default_rng(11)
    for _ in range(2000):
        n = int(rng.integers(2, 10**6))
        se = float(rng.uniform(0.01, 2)) / math.sqrt(n)
        difference = float(rng.normal(0, 5 * se))
        level = float(rng.uniform(0.5, 0.999))
        rho = tuning(float(rng.uniform(100, 10**5)), 0.95)
        low, high = confidence_sequence(difference, se, n, level, rho)
        p = anytime_p_value(difference, se, n, rho)
        assert 0 <= p <= 1
        assert (low > 0 or high < 0) == (p < 1 - level)


def test_sequential_edge_cases() -> None:
    rho = tuning(1000, 0.95)
    assert confidence_sequence(1.0, 0.1, 0, 0.95, rho) == (-math.inf, math.inf)
    assert anytime_p_value(1.0, 0.1, 0, rho) == 1.0
    assert confidence_sequence(1.0, 0.0, 100, 0.95, rho) == (1.0, 1.0)
    assert anytime_p_value(1.0, 0.0, 100, rho) == 0.0
    assert anytime_p_value(0.0, 0.0, 100, rho) == 1.0
    assert all(math.isnan(b) for b in confidence_sequence(1.0, math.nan, 100, 0.95, rho))
    assert math.isnan(anytime_p_value(1.0, math.nan, 100, rho))
    with pytest.raises(ValueError, match="rho"):
        confidence_sequence(1.0, 0.1, 10, 0.95, 0.0)


RUNS, LOOKS, PER_LOOK = 200, 30, 100  # 100 new users per arm at each of 30 looks


def _peeks(effect: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Difference, its standard error and units so far (both arms), for every run and look."""
    rng = np.random.default_rng(seed)
    treatment = rng.normal(effect, 1.0, size=(RUNS, LOOKS, PER_LOOK))
    control = rng.normal(0.0, 1.0, size=(RUNS, LOOKS, PER_LOOK))
    per_arm = PER_LOOK * np.arange(1, LOOKS + 1)

    def mean_and_var(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = values.sum(axis=2).cumsum(axis=1)
        sum_sq = (values**2).sum(axis=2).cumsum(axis=1)
        return total / per_arm, (sum_sq - total**2 / per_arm) / (per_arm - 1)

    mean_t, var_t = mean_and_var(treatment)
    mean_c, var_c = mean_and_var(control)
    se = np.sqrt(var_t / per_arm + var_c / per_arm)
    return mean_t - mean_c, se, np.broadcast_to(2 * per_arm, se.shape)


def _sequences(effect: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    difference, se, units = _peeks(effect, seed)
    rho = tuning(1000, 0.95)
    bounds = np.array(
        [
            confidence_sequence(float(d), float(s), int(n), 0.95, rho)
            for d, s, n in zip(difference.ravel(), se.ravel(), units.ravel(), strict=True)
        ]
    ).reshape(*difference.shape, 2)
    return bounds[..., 0], bounds[..., 1]


def test_peeking_at_the_confidence_sequence_keeps_the_false_positive_rate() -> None:
    low, high = _sequences(effect=0.0, seed=20240501)
    ever_excludes = ((low > 0) | (high < 0)).any(axis=1)
    assert ever_excludes.mean() <= 0.05


def test_peeking_at_the_fixed_horizon_interval_inflates_false_positives() -> None:
    """Documents the problem the sequence solves: 30 looks at a 95% interval reject far too
    often."""
    difference, se, _ = _peeks(effect=0.0, seed=20240501)
    ever_rejects = (np.abs(difference) > sps.norm.ppf(0.975) * se).any(axis=1)
    assert ever_rejects.mean() > 0.15


def test_the_confidence_sequence_finds_a_real_effect_with_the_right_sign() -> None:
    low, high = _sequences(effect=-0.2, seed=7)
    assert (high < 0).any(axis=1).all()  # every run eventually sees the harm
    assert not (low > 0).any()  # and none ever claims a benefit
