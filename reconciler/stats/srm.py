"""Sample ratio mismatch: do the observed unit counts fit the configured traffic weights?

A mismatch means assignment or logging is broken and the experiment's results should not be
trusted (Fabijan et al. 2019, "Diagnosing Sample Ratio Mismatch in Online Controlled
Experiments: A Taxonomy and Rules of Thumb for Practitioners", KDD '19; Kohavi, Tang & Xu 2020,
*Trustworthy Online Controlled Experiments*, ch. 21).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from scipy import stats  # type: ignore[import-untyped]

SRM_THRESHOLD = 0.001
"""Flag a mismatch below this p-value. Stricter than 0.05 because true SRMs are rare, so a loose
threshold would make most alarms false (GrowthBook's default, with that reasoning, in its
"Sample Ratio Mismatch (SRM) Detection" documentation)."""


@dataclass(frozen=True)
class SampleRatio:
    """The goodness-of-fit result over the variants with a positive weight.

    ``counts`` are the observed units and ``expected`` the units the weights imply, both keyed by
    variant in the order of the weights; ``mismatch`` is ``p_value < threshold``.
    """

    counts: Mapping[str, int]
    expected: Mapping[str, float]
    chi2: float
    df: int
    p_value: float
    mismatch: bool


def sample_ratio(
    counts: Mapping[str, int], weights: Mapping[str, float], threshold: float = SRM_THRESHOLD
) -> SampleRatio:
    """Pearson's chi-square goodness-of-fit test of observed counts against the weights.

    ``expected_i = total * w_i / sum(w)`` and ``chi2 = sum (observed_i - expected_i)^2 /
    expected_i`` on ``k - 1`` degrees of freedom (Pearson 1900, "On the criterion that a given
    system of deviations from the probable ...", *Philosophical Magazine* 5th ser. 50(302);
    identical to ``scipy.stats.chisquare(observed, expected)``).

    Only variants with a positive weight take part: a zero-weight variant is not expected to
    receive traffic, and units counted under a variant absent from ``weights`` are left out too.
    A weighted variant missing from ``counts`` observed 0 units. With no units, or fewer than two
    weighted variants, there is nothing to test: ``chi2 = 0``, ``p_value = 1``, no mismatch.
    Negative counts or weights raise :class:`ValueError`.
    """
    if any(weight < 0 or math.isnan(weight) for weight in weights.values()):
        raise ValueError(f"weights must be >= 0, got {dict(weights)}")
    if any(count < 0 for count in counts.values()):
        raise ValueError(f"counts must be >= 0, got {dict(counts)}")
    variants = [name for name, weight in weights.items() if weight > 0]
    observed = {name: counts.get(name, 0) for name in variants}
    total = sum(observed.values())
    weight_sum = math.fsum(weights[name] for name in variants)
    expected = {name: total * weights[name] / weight_sum for name in variants}
    df = len(variants) - 1
    if total == 0 or df < 1:
        chi2, p_value = 0.0, 1.0
    else:
        chi2 = math.fsum(
            (observed[name] - expected[name]) ** 2 / expected[name] for name in variants
        )
        p_value = float(stats.chi2.sf(chi2, df))
    return SampleRatio(
        counts=MappingProxyType(observed),
        expected=MappingProxyType(expected),
        chi2=chi2,
        df=max(df, 0),
        p_value=p_value,
        mismatch=p_value < threshold,
    )
