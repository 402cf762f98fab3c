"""Adjusting p-values for multiple comparisons (several metrics or variants in one experiment)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the order given.

    Sort ascending, ``p_(1) <= ... <= p_(m)``; the adjusted value of the ``i``-th smallest is
    ``min(1, max_{j <= i} (m - j + 1) * p_(j))``. Rejecting every hypothesis whose adjusted value
    is at most ``alpha`` is Holm's sequentially rejective procedure, which controls the
    family-wise error rate at ``alpha`` under any dependence (Holm 1979, "A simple sequentially
    rejective multiple test procedure", *Scandinavian Journal of Statistics* 6(2); adjusted
    p-values as in Wright 1992, "Adjusted P-values for simultaneous inference", *Biometrics*
    48(4)). Identical to ``statsmodels.stats.multitest.multipletests(p, method='holm')[1]``.

    Ties get the same adjusted value whatever their order. A p-value outside [0, 1] (or nan)
    raises :class:`ValueError`.
    """
    for p in p_values:
        if not 0 <= p <= 1:  # also rejects nan
            raise ValueError(f"p-values must be in [0, 1], got {p}")
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [math.nan] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (m - rank) * p_values[index])
        adjusted[index] = min(running, 1.0)
    return adjusted
