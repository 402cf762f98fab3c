"""Building blocks shared by every manifest kind: the strict base model and the value types.

The pydantic models are the single source of truth: ``reconciler.schema`` generates the JSON
Schemas in ``schemas/`` from them. Constraints that JSON Schema can express live here; rules that
span fields or files live in ``reconciler.checks``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,127}$"
TIMESTAMP_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
)
SEMVER_PATTERN = (
    r"^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)
TAG_PATTERN = r"^[a-z0-9][a-z0-9_.:/-]{0,62}$"


def _integral(value: object) -> object:
    """Accept ``7.0`` where an integer is expected, as JSON Schema's ``integer`` does."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Name = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="An identifier: a letter, then letters, digits, '_' or '-' (at most 128).",
    ),
]
Integer = Annotated[int, BeforeValidator(_integral)]
Percentage = Annotated[float, Field(ge=0, le=100)]
Timestamp = Annotated[
    str,
    Field(
        pattern=TIMESTAMP_PATTERN,
        description="An RFC 3339 time with a time zone, e.g. 2025-01-09T10:00:00Z.",
        examples=["2025-01-09T10:00:00Z"],
    ),
]
Tag = Annotated[str, Field(pattern=TAG_PATTERN, description="A lower-case label.")]


def _no_repeats(items: list[Any]) -> list[Any]:
    for index, item in enumerate(items):
        if item in items[:index]:
            raise ValueError(f"{item!r} appears twice")
    return items


UNIQUE_ITEMS: dict[str, Any] = {"uniqueItems": True}
Tags = Annotated[list[Tag], AfterValidator(_no_repeats), Field(json_schema_extra=UNIQUE_ITEMS)]
NameList = Annotated[list[Name], AfterValidator(_no_repeats), Field(json_schema_extra=UNIQUE_ITEMS)]
Text = Annotated[str, Field(min_length=1, max_length=2000)]


class StrictModel(BaseModel):
    """Frozen, no unknown fields, no type coercion, and no explicit ``null`` values."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=False)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                if value is None:
                    raise ValueError(f"{key}: null is not allowed; remove the field instead")
        return data


class Manifest(StrictModel):
    """Fields every manifest kind carries besides its ``kind`` and its name."""

    description: Text = Field(description="What this is for, in a sentence or two.")
    owner: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        description="Team or person accountable for it: who to ask, who gets paged.",
        examples=["team-vc-platform"],
    )
    tags: Tags = Field(default_factory=list, description="Free labels for search and grouping.")
    deletion_protection: bool = Field(
        default=False,
        description=(
            "When true, reconcile refuses to delete the live record even if this file is "
            "removed; set it to false in a reviewed change first."
        ),
    )

    name_field: ClassVar[str]
    folder: ClassVar[str]

    @property
    def object_name(self) -> str:
        """The manifest's identifier, which is also its file name."""
        value = getattr(self, self.name_field)
        assert isinstance(value, str)
        return value
