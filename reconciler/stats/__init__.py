"""Statistics for A/B experiment analysis: pure functions over sufficient statistics, no I/O.

Build one :class:`Estimate` per arm (:func:`from_moments`, :func:`from_clusters`), compare arms
(:func:`welch`, :func:`two_proportions`), check assignment (:func:`sample_ratio`), adjust for
several comparisons (:func:`holm`) and watch an experiment continuously without inflating false
positives (:func:`tuning`, :func:`confidence_sequence`, :func:`anytime_p_value`). Each formula's
docstring cites its source.
"""

from __future__ import annotations

from reconciler.stats.compare import Comparison, two_proportions, welch
from reconciler.stats.estimates import Estimate, from_clusters, from_moments
from reconciler.stats.multiple import holm
from reconciler.stats.sequential import anytime_p_value, confidence_sequence, tuning
from reconciler.stats.srm import SRM_THRESHOLD, SampleRatio, sample_ratio

__all__ = [
    "SRM_THRESHOLD",
    "Comparison",
    "Estimate",
    "SampleRatio",
    "anytime_p_value",
    "confidence_sequence",
    "from_clusters",
    "from_moments",
    "holm",
    "sample_ratio",
    "tuning",
    "two_proportions",
    "welch",
]
