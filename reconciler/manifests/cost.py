"""The CostThreshold kind: spend limits that throttle or shut AI features down."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from reconciler.manifests.common import Manifest, Name, NameList, Percentage, StrictModel

# The shape here; that the zone exists is a semantic check (reconciler.checks, rule
# "time-zone"), so the schema and the model accept the same documents.
TimeZone = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_+/-]{0,63}$")]


class ThrottleLimit(StrictModel):
    """Spend at which rollouts are reduced."""

    amount_usd: float = Field(gt=0, description="Spend in USD over the period.")
    rollout_factor: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Effective rollout is multiplied by this while throttled (0.5 halves it).",
    )


class EmergencyLimit(StrictModel):
    """Spend at which the AI features in scope shut down."""

    amount_usd: float = Field(gt=0, description="Spend in USD over the period.")


class CostScope(StrictModel):
    """Which spend counts, and which features the limits act on."""

    flags: NameList = Field(
        default_factory=list,
        description="flag_names whose request types' spend counts and which are acted on.",
    )
    request_types: NameList = Field(
        default_factory=list,
        description="Request types (as flags declare them) whose spend counts.",
    )


class CostThreshold(Manifest):
    """Spend limits: alert, throttle, then shut down."""

    name_field: ClassVar[str] = "threshold_name"
    folder: ClassVar[str] = "costs.d"
    model_config = ConfigDict(
        title="CostThreshold",
        json_schema_extra={
            "examples": [
                {
                    "kind": "CostThreshold",
                    "threshold_name": "ai_daily_budget",
                    "description": "Daily AI spend limits",
                    "owner": "team-finops",
                    "period": "daily",
                    "applies_to": "all",
                    "throttle": {"amount_usd": 100, "rollout_factor": 0.5},
                    "emergency": {"amount_usd": 500},
                    "alert_at_percentage": 80,
                }
            ]
        },
    )

    kind: Literal["CostThreshold"] = Field(description="Always CostThreshold.")
    threshold_name: Name = Field(
        description="The threshold's name, equal to the file name.", examples=["ai_daily_budget"]
    )
    period: Literal["daily", "monthly"] = Field(
        default="daily",
        description="The spend window: the day or the month, in time_zone; it starts from "
        "nothing at midnight, which lifts the throttle and the shutdown by themselves.",
    )
    time_zone: TimeZone = Field(
        default="UTC",
        description="The IANA time zone whose midnight starts a period, e.g. Europe/Berlin.",
        examples=["UTC", "Europe/Berlin", "America/New_York"],
    )
    applies_to: Literal["all"] | CostScope = Field(
        description="all: every AI feature's spend counts and every AI feature is acted on; "
        "or a scope of flags and request types."
    )
    throttle: ThrottleLimit | None = Field(
        default=None, description="Reduce rollouts at this spend."
    )
    emergency: EmergencyLimit | None = Field(
        default=None, description="Shut the features in scope down at this spend."
    )
    alert_at_percentage: Percentage = Field(
        default=80,
        description="Alert when spend reaches this percentage of each limit (and at each "
        "limit); 100 alerts at the limits only.",
    )
    enabled: bool = Field(default=True, description="false keeps the threshold but ignores it.")
