"""The Flag kind: one feature flag, one file in ``flags.d/``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, JsonValue

from reconciler.manifests.common import Manifest, Name, Percentage
from reconciler.manifests.targeting import Targeting

FlagType = Literal["boolean", "string", "number", "json"]


class Flag(Manifest):
    """A feature flag: whether an AI feature is on, for whom, and with which value."""

    name_field: ClassVar[str] = "flag_name"
    folder: ClassVar[str] = "flags.d"
    model_config = ConfigDict(
        title="Flag",
        json_schema_extra={
            "examples": [
                {
                    "kind": "Flag",
                    "flag_name": "vc_bedrock_live",
                    "description": "Enable Bedrock AI analysis",
                    "owner": "team-vc-platform",
                    "enabled": True,
                    "value": True,
                    "rollout_percentage": 100,
                    "cost_threshold": 100,
                    "request_type": "vc_analysis",
                }
            ]
        },
    )

    kind: Literal["Flag"] = Field(description="Always Flag.")
    flag_name: Name = Field(
        description="The flag's name, equal to the file name: snake_case with a component "
        "prefix such as vc_, dashboard_ or auth_.",
        examples=["vc_bedrock_live"],
    )
    enabled: bool = Field(description="The kill switch: false turns the feature off for everyone.")
    type: FlagType = Field(
        default="boolean", description="The type of value: boolean, string, number or json."
    )
    value: JsonValue = Field(
        default=True,
        description="The value served while the flag is on; it must match type. Defaults to "
        "true for boolean flags and is required for the other types.",
        json_schema_extra={"not": {"type": "null"}},
    )
    fail_mode: Literal["open", "closed"] = Field(
        default="closed",
        description="With no usable snapshot at all: closed serves off (no AI spend without "
        "control), open serves the value.",
    )
    rollout_percentage: Percentage = Field(
        default=100,
        description="Share of eligible users who get the feature (0-100), by consistent "
        "hashing. An active rollout strategy's schedule takes its place.",
    )
    targeting: Targeting | None = Field(
        default=None, description="Rules on the user's context that include or exclude users."
    )
    experiment: Name | None = Field(
        default=None,
        description="The experiment_id of the experiment running on this flag, if any; it "
        "must name this flag as its feature_flag.",
    )
    rollout_strategy: Name | None = Field(
        default=None,
        description="The strategy_name of the rollout strategy ramping this flag, if any; it "
        "must name this flag as its feature_flag.",
    )
    cost_threshold: float | None = Field(
        default=None,
        gt=0,
        description="Daily (UTC) spend in USD of this flag's request type at or over which the "
        "cost guard halves this flag's rollout for the rest of the day (COST_THROTTLED), as "
        "the original system's cost_threshold did; needs request_type.",
    )
    request_type: Name | None = Field(
        default=None,
        description="The request type whose spend is counted for this flag in the cost "
        "metrics, e.g. vc_analysis.",
        examples=["vc_analysis"],
    )
