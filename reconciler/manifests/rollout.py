"""The RolloutStrategy kind: how a flag ramps up, one file in ``rollouts.d/``."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from reconciler.manifests.common import Integer, Manifest, Name, Percentage, StrictModel, Timestamp
from reconciler.manifests.targeting import Targeting

Comparison = Literal["less_than", "less_than_or_equal", "greater_than", "greater_than_or_equal"]
CheckType = Literal[
    "error_rate",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "cost_per_request",
    "quality_score",
    "custom_metric",
]
Statistic = Literal["Average", "Sum", "Minimum", "Maximum", "SampleCount"]
MetricName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^\S(.*\S)?$")]
MAX_WINDOW = 1440  # minutes: a check reads one ops bucket per five minutes of its window
# What a check or a promotion criterion measures from the services' recorded outcomes.
MEASURED = (
    "error_rate",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "cost_per_request",
    "quality_score",
)


class CanaryStage(StrictModel):
    """One stage of a canary: a share of users held for at least a while."""

    name: Name = Field(description="The stage's name, e.g. canary, early, half, full.")
    percentage: Percentage = Field(description="Share of users in this stage (0-100).")
    min_duration_hours: float = Field(
        default=0, ge=0, description="Hours the stage must run before promotion."
    )


class PromotionCriterion(StrictModel):
    """A condition a canary stage must meet before it is promoted to the next."""

    metric_name: Name = Field(
        description="What is measured on the stage's users: error_rate (%), latency_p50, "
        "latency_p95, latency_p99 (ms), cost_per_request (USD) or quality_score."
    )
    comparison: Comparison = Field(description="How the metric must compare with threshold.")
    threshold: float = Field(description="The value the metric is compared with.")
    window_minutes: Integer = Field(
        default=60, ge=1, le=MAX_WINDOW, description="Measurement window (up to a day)."
    )
    min_sample_size: Integer = Field(
        default=100, ge=1, description="Requests needed before the criterion counts."
    )


class RolloutConfiguration(StrictModel):
    """The schedule: a start percentage raised by an increment every interval up to a max."""

    percentage: Percentage | None = Field(
        default=None,
        description="Share of users at the start (0-100); required but for rollout_type "
        "canary, whose first stage sets it.",
    )
    increment_percentage: Percentage = Field(
        default=0, description="Added to the share every interval; 0 keeps it fixed."
    )
    increment_interval_hours: float = Field(
        default=24, gt=0, description="Hours between increments."
    )
    max_percentage: Percentage = Field(default=100, description="The share the ramp stops at.")
    start_time: Timestamp | None = Field(
        default=None, description="When the schedule starts; when it is first applied if omitted."
    )
    targeting: Targeting | None = Field(
        default=None,
        description="For rollout_type targeting: the users (geography, demographics) the "
        "schedule applies to.",
    )
    stages: list[CanaryStage] = Field(
        default_factory=list,
        description="For rollout_type canary: stages in order, with rising percentages.",
    )
    promotion_criteria: list[PromotionCriterion] = Field(
        default_factory=list, description="For rollout_type canary: what promotes a stage."
    )


class Measured(StrictModel):
    """What a health check or a rollback condition measures, and how much it needs."""

    check_type: CheckType = Field(description="What is measured.")
    metric_name: MetricName | None = Field(
        default=None, description="For check_type custom_metric: the CloudWatch metric's name."
    )
    namespace: MetricName | None = Field(
        default=None, description="For check_type custom_metric: the CloudWatch namespace."
    )
    dimensions: dict[MetricName, MetricName] | None = Field(
        default=None, description="For check_type custom_metric: the metric's dimensions."
    )
    statistic: Statistic | None = Field(
        default=None,
        description="For check_type custom_metric: what is compared (default Average).",
    )
    threshold: float = Field(description="The value the measurement is compared with.")
    min_sample_size: Integer | None = Field(
        default=None,
        ge=1,
        description="Requests (for custom_metric: samples) in the window before the "
        "measurement counts; fewer is insufficient data (default 100).",
    )


class HealthCheck(Measured):
    """A check that must keep passing while the rollout advances."""

    check_name: Name = Field(description="The check's name, unique in the strategy.")
    comparison: Comparison = Field(description="How a healthy measurement compares.")
    window_minutes: Integer = Field(
        default=60, ge=1, le=MAX_WINDOW, description="Measurement window (up to a day)."
    )
    enabled: bool = Field(default=True, description="false skips the check.")


class RollbackCondition(Measured):
    """A condition that, when met, rolls the rollout back (or pauses it)."""

    condition_name: Name = Field(description="The condition's name, unique in the strategy.")
    comparison: Comparison = Field(description="How a measurement that triggers compares.")
    window_minutes: Integer = Field(
        default=15, ge=1, le=MAX_WINDOW, description="Measurement window (up to a day)."
    )
    action: Literal["rollback", "pause"] = Field(
        default="rollback", description="rollback to 0%, or pause at the current share."
    )


class RolloutStrategy(Manifest):
    """How a flag reaches its users over time, and when to stop or roll back."""

    name_field: ClassVar[str] = "strategy_name"
    folder: ClassVar[str] = "rollouts.d"
    model_config = ConfigDict(
        title="RolloutStrategy",
        json_schema_extra={
            "examples": [
                {
                    "kind": "RolloutStrategy",
                    "strategy_name": "bedrock_gradual_rollout",
                    "description": "Ramp Bedrock AI analysis 10% a day",
                    "owner": "team-vc-platform",
                    "feature_flag": "vc_bedrock_live",
                    "rollout_type": "percentage",
                    "configuration": {
                        "percentage": 10,
                        "increment_percentage": 10,
                        "increment_interval_hours": 24,
                    },
                    "created_by": "system",
                }
            ]
        },
    )

    kind: Literal["RolloutStrategy"] = Field(description="Always RolloutStrategy.")
    strategy_name: Name = Field(
        description="The strategy's name, equal to the file name.",
        examples=["bedrock_gradual_rollout"],
    )
    feature_flag: Name = Field(description="The flag_name of the flag this strategy ramps.")
    rollout_type: Literal["percentage", "targeting", "canary"] = Field(
        description="percentage: a schedule for everyone; targeting: a schedule for the "
        "targeted users; canary: stages promoted by criteria."
    )
    active: bool = Field(
        default=True, description="Whether the strategy drives the flag; one active per flag."
    )
    configuration: RolloutConfiguration = Field(description="The schedule and its parts.")
    health_checks: list[HealthCheck] = Field(
        default_factory=list, description="Checks that must pass for the rollout to advance."
    )
    rollback_conditions: list[RollbackCondition] = Field(
        default_factory=list, description="Conditions that roll the rollout back."
    )
    created_by: str = Field(
        default="", max_length=128, description="Who created the strategy (the original field)."
    )
