"""Generate a large manifest tree for the benchmarks: N flags, M experiments on them."""

from __future__ import annotations

from pathlib import Path

FLAG = """\
kind: Flag
flag_name: {name}
description: Benchmark flag {index}.
owner: team-bench
tags: [bench]
enabled: true
type: string
value: model-{index}
rollout_percentage: {rollout}
request_type: bench_requests
targeting:
  rules:
    - name: markets
      action: include
      when:
        all:
          - attribute: country
            operator: in
            values: [DE, FR, GB, "NO"]
          - attribute: plan
            operator: not_equals
            value: free
"""

EXPERIMENT = """\
kind: Experiment
experiment_id: {name}
name: Benchmark experiment {index}
description: Benchmark experiment {index}.
owner: team-bench
feature_flag: {flag}
status: active
variants:
  - name: control
    config: {{model: claude-3.5-sonnet}}
    weight: 50
  - name: treatment
    config: {{model: gemini-pro}}
    weight: 50
success_metrics:
  - metric_name: response_quality
    metric_type: numeric
    primary: true
"""


def generate(root: Path, flags: int, experiments: int) -> Path:
    """Write the tree under ``root`` and return it."""
    for folder in ("flags.d", "experiments.d", "rollouts.d", "costs.d"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(flags):
        name = f"bench_flag_{index:05d}"
        text = FLAG.format(name=name, index=index, rollout=(index * 7) % 101)
        (root / "flags.d" / f"{name}.yaml").write_text(text)
    for index in range(experiments):
        name = f"bench_exp_{index:05d}"
        text = EXPERIMENT.format(name=name, index=index, flag=f"bench_flag_{index:05d}")
        (root / "experiments.d" / f"{name}.yaml").write_text(text)
    return root
