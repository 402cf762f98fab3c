"""Targeting: conditions on any context attribute, combined with all / any / not."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, RootModel

from reconciler.manifests.common import SEMVER_PATTERN, Name, Percentage, StrictModel

Attribute = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$",
        description=(
            "A context attribute, e.g. country, region, plan, age_band, app_version. "
            "Dots reach into nested attributes (device.os)."
        ),
        examples=["country"],
    ),
]
Scalar = str | int | float | bool

ListOperator = Literal["in", "not_in"]
EqualityOperator = Literal["equals", "not_equals"]
NumericOperator = Literal[
    "less_than", "less_than_or_equal", "greater_than", "greater_than_or_equal"
]
SemverOperator = Literal[
    "semver_equals",
    "semver_less_than",
    "semver_less_than_or_equal",
    "semver_greater_than",
    "semver_greater_than_or_equal",
]


class ListCondition(StrictModel):
    """True when the attribute is (``in``) or is not (``not_in``) one of the values."""

    attribute: Attribute
    operator: ListOperator = Field(description="in: one of the values; not_in: none of them.")
    values: list[Scalar] = Field(
        min_length=1, description="The values to compare with.", examples=[["DE", "FR"]]
    )


class EqualityCondition(StrictModel):
    """True when the attribute equals (or does not equal) the value."""

    attribute: Attribute
    operator: EqualityOperator = Field(description="equals or not_equals.")
    value: Scalar = Field(description="The value to compare with.", examples=["pro"])


class NumericCondition(StrictModel):
    """Compares a numeric attribute with a number."""

    attribute: Attribute
    operator: NumericOperator = Field(description="How the attribute compares with the value.")
    value: float = Field(description="The number to compare with.", examples=[18])


class SemverCondition(StrictModel):
    """Compares a semantic-version attribute (e.g. app_version) with a version."""

    attribute: Attribute
    operator: SemverOperator = Field(description="How the attribute's version compares.")
    value: str = Field(
        pattern=SEMVER_PATTERN,
        description="A semantic version such as 2.4.0 or v3.0.0-beta.1.",
        examples=["2.4.0"],
    )


class MatchCondition(StrictModel):
    """True when the attribute matches a regular expression (Python syntax, searched)."""

    attribute: Attribute
    operator: Literal["matches"] = Field(description="Regular-expression search.")
    value: str = Field(
        min_length=1, description="The regular expression.", examples=[r"@example\.com$"]
    )


class ExistsCondition(StrictModel):
    """True when the context carries the attribute at all."""

    attribute: Attribute
    operator: Literal["exists"] = Field(description="The attribute is present.")


AttributeCondition = Annotated[
    ListCondition
    | EqualityCondition
    | NumericCondition
    | SemverCondition
    | MatchCondition
    | ExistsCondition,
    Field(discriminator="operator"),
]


class AllCondition(StrictModel):
    """True when every condition in the list is true."""

    all: list[Condition] = Field(min_length=1, description="Conditions that must all hold.")


class AnyCondition(StrictModel):
    """True when at least one condition in the list is true."""

    any: list[Condition] = Field(min_length=1, description="Conditions of which one must hold.")


class NotCondition(StrictModel):
    """True when the inner condition is false."""

    not_: Condition = Field(alias="not", description="The condition to negate.")


class Condition(RootModel[AttributeCondition | AllCondition | AnyCondition | NotCondition]):
    """A condition on the context: an attribute test, or all / any / not of conditions."""

    model_config = ConfigDict(frozen=True)


class TargetingRule(StrictModel):
    """One rule: when its condition holds, the user is included or excluded."""

    name: Name = Field(description="The rule's name, reported as the matched rule.")
    description: str = Field(default="", description="Why the rule exists.")
    action: Literal["include", "exclude"] = Field(
        description="include: the user may get the feature; exclude: the user never does."
    )
    when: Condition = Field(description="The condition the user's context must meet.")
    rollout_percentage: Percentage | None = Field(
        default=None,
        description=(
            "For include rules: the share of matching users who get the feature, in place of "
            "the flag's rollout_percentage."
        ),
    )


class Targeting(StrictModel):
    """Targeting rules, evaluated in order; the first rule that matches decides."""

    rules: list[TargetingRule] = Field(min_length=1, description="Rules, first match wins.")
    default: Literal["include", "exclude"] | None = Field(
        default=None,
        description=(
            "What happens to users no rule matches. Omitted: exclude when any rule includes "
            "(an allow list), include otherwise (a block list)."
        ),
    )

    @property
    def effective_default(self) -> Literal["include", "exclude"]:
        if self.default is not None:
            return self.default
        return "exclude" if any(r.action == "include" for r in self.rules) else "include"
