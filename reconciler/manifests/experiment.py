"""The Experiment kind: an A/B test on one flag, one file in ``experiments.d/``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, JsonValue

from reconciler.manifests.common import (
    Integer,
    Manifest,
    Name,
    Percentage,
    StrictModel,
    Text,
    Timestamp,
)

MetricType = Literal["numeric", "binary", "count"]
Direction = Literal["increase", "decrease"]


class Variant(StrictModel):
    """One arm of the experiment."""

    name: Name = Field(description="The variant's name, unique in the experiment.")
    description: str = Field(default="", description="What this variant does differently.")
    config: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Configuration handed to the service with the variant, e.g. the model id.",
        examples=[{"model": "claude-3.5-sonnet"}],
    )
    weight: Percentage = Field(
        description="Share of the experiment's traffic (0-100); the weights sum to 100."
    )


class SuccessMetric(StrictModel):
    """A metric the experiment is meant to move."""

    metric_name: Name = Field(description="The metric's name, as events record it.")
    metric_type: MetricType = Field(
        description="numeric (a mean, e.g. a quality score), binary (a rate, e.g. conversion) "
        "or count (events per user)."
    )
    primary: bool = Field(
        default=False, description="The one metric the experiment's conclusion is decided on."
    )
    direction: Direction = Field(default="increase", description="Which way is better.")
    target_improvement: float | None = Field(
        default=None,
        gt=0,
        description="The relative improvement in percent worth detecting (the minimum "
        "detectable effect).",
    )


class GuardrailMetric(StrictModel):
    """A metric that must not get worse; crossing its limit stops the experiment."""

    metric_name: Name = Field(description="The metric's name, as events record it.")
    metric_type: MetricType = Field(description="numeric, binary or count.")
    direction: Direction = Field(description="Which way is better, e.g. decrease for latency.")
    max_degradation: float = Field(
        gt=0, description="The largest relative change in percent, the wrong way, tolerated."
    )


class Experiment(Manifest):
    """An A/B experiment: variants of one flag, the metrics that decide, and when to stop."""

    name_field: ClassVar[str] = "experiment_id"
    folder: ClassVar[str] = "experiments.d"
    model_config = ConfigDict(
        title="Experiment",
        json_schema_extra={
            "examples": [
                {
                    "kind": "Experiment",
                    "experiment_id": "claude_vs_gemini",
                    "name": "Claude vs Gemini Comparison",
                    "description": "Compare response quality between AI models",
                    "owner": "team-ai-quality",
                    "feature_flag": "ai_model_selection",
                    "status": "active",
                    "variants": [
                        {"name": "claude", "config": {"model": "claude-3.5-sonnet"}, "weight": 50},
                        {"name": "gemini", "config": {"model": "gemini-pro"}, "weight": 50},
                    ],
                    "success_metrics": [
                        {
                            "metric_name": "response_quality",
                            "metric_type": "numeric",
                            "primary": True,
                            "target_improvement": 10,
                        }
                    ],
                }
            ]
        },
    )

    kind: Literal["Experiment"] = Field(description="Always Experiment.")
    experiment_id: Name = Field(
        description="The experiment's id, equal to the file name; it also salts the "
        "variant assignment.",
        examples=["claude_vs_gemini"],
    )
    name: Text = Field(description="A human-readable title.")
    feature_flag: Name = Field(description="The flag_name of the flag this experiment runs on.")
    hypothesis: str = Field(default="", description="What you expect to happen, and why.")
    status: Literal["draft", "active", "paused", "concluded"] = Field(
        default="draft",
        description="draft and paused assign nobody; active assigns; concluded serves winner.",
    )
    variants: list[Variant] = Field(
        min_length=2, description="At least two variants; their weights sum to 100."
    )
    control: Name | None = Field(
        default=None, description="The variant the others are compared with; the first if omitted."
    )
    traffic_percentage: Percentage = Field(
        default=100,
        description="Share of the flag's users enrolled in the experiment; the rest get the "
        "control.",
    )
    success_metrics: list[SuccessMetric] = Field(
        min_length=1, description="The metrics the experiment should move; exactly one primary."
    )
    guardrail_metrics: list[GuardrailMetric] = Field(
        default_factory=list, description="Metrics that must not get worse."
    )
    confidence_level: float = Field(
        default=0.95,
        ge=0.8,
        lt=1,
        description="Confidence of the intervals, and of the anytime-valid interval that "
        "auto-conclusion requires, e.g. 0.95.",
    )
    minimum_duration_days: Integer = Field(
        default=7, ge=0, le=365, description="No conclusion before this many days of running."
    )
    minimum_sample_size: Integer = Field(
        default=1000,
        ge=1,
        description="No conclusion before each variant has this many users; also where the "
        "anytime-valid interval is tuned to be tightest.",
    )
    start_time: Timestamp | None = Field(
        default=None, description="When assignment starts; immediately on apply if omitted."
    )
    end_time: Timestamp | None = Field(
        default=None,
        description="When assignment ends (everyone gets the control from then on, until the "
        "experiment is concluded); open-ended if omitted.",
    )
    winner: Name | None = Field(
        default=None, description="For a concluded experiment: the variant everyone gets."
    )
