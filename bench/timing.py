"""Timing one call on the request path: throughput from a tight loop, latency from each call."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any


def _timed_calls(decide: Callable[[dict[str, Any]], Any], users: list[dict[str, Any]]) -> list[int]:
    timings = []
    clock = time.perf_counter_ns
    for context in users:
        before = clock()
        decide(context)
        timings.append(clock() - before)
    return sorted(timings)


def measure(
    decide: Callable[[dict[str, Any]], Any], users: list[dict[str, Any]]
) -> dict[str, float]:
    """Throughput from a tight loop; latency percentiles from timing every call, less the
    timer's own cost (measured on a call that does nothing)."""
    gc.disable()
    try:
        started = time.perf_counter()
        for context in users:
            decide(context)
        elapsed = time.perf_counter() - started
        overhead = _timed_calls(lambda _: None, users)[len(users) // 2]
        timings = [max(0, t - overhead) for t in _timed_calls(decide, users)]
    finally:
        gc.enable()
    count = len(timings)
    return {
        "p50": timings[count // 2] / 1000,
        "p99": timings[int(count * 0.99)] / 1000,
        "p99.9": timings[int(count * 0.999)] / 1000,
        "mean": elapsed / count * 1e6,
        "per_second": count / elapsed,
    }
