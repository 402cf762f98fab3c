"""The plan and its parts, and their JSON form (a documented, versioned format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from reconciler.errors import UserError
from reconciler.state.records import Item, RecordKind

PLAN_FORMAT_VERSION = 1

Action = Literal["create", "update", "delete", "unchanged"]
FieldKind = Literal["added", "removed", "changed"]


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field of one record: its path (``ab_test_config.variants[0].weight``), before, after."""

    path: str
    before: Any = None
    after: Any = None
    kind: FieldKind = "changed"


@dataclass(frozen=True, slots=True)
class Risk:
    """A change a reviewer must not miss, with the share of users it moves when known."""

    code: str  # kill-switch-off | kill-switch-on | rollout-jump | traffic-reallocation | ...
    message: str
    users_affected: float | None = None  # share in [0, 1]


@dataclass(frozen=True, slots=True)
class Hold:
    """Another owner's record that outranks git: apply leaves the git change waiting."""

    owner: Literal["override", "controller"]
    detail: str
    since: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    kind: RecordKind
    name: str
    action: Action
    before: Item | None = None  # git-owned attributes in the store now
    after: Item | None = None  # git-owned attributes git wants
    expected_version: int | None = None  # the version the plan saw; None: must not exist
    desired_hash: str | None = None
    fields: tuple[FieldChange, ...] = ()
    risks: tuple[Risk, ...] = ()
    holds: tuple[Hold, ...] = ()
    drift: bool = False  # edited outside git since the last apply
    blocked: str | None = None  # why apply refuses this change

    @property
    def address(self) -> str:
        return f"{self.kind.label}/{self.name}"

    @property
    def pending(self) -> bool:
        return self.action != "unchanged"

    @property
    def held(self) -> bool:
        return self.pending and any(h.owner == "override" for h in self.holds)


@dataclass(frozen=True, slots=True)
class Unmanaged:
    """A record in the store that reconcile did not create and leaves alone."""

    kind: RecordKind
    name: str

    @property
    def address(self) -> str:
        return f"{self.kind.label}/{self.name}"


@dataclass(frozen=True)
class Plan:
    plan_id: str
    created_at: str
    git_commit: str | None
    store: str
    changes: tuple[Change, ...]
    unmanaged: tuple[Unmanaged, ...] = ()
    notes: tuple[str, ...] = field(default=())
    # The digest of the desired state the plan was made from (``desired_digest``): what
    # ``--apply PLAN`` recomputes from the work tree to prove it declares the same records.
    desired_digest: str | None = None

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action == action)

    @property
    def pending(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.pending)

    @property
    def has_changes(self) -> bool:
        return bool(self.pending)

    @property
    def blocked(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.blocked)

    def summary(self) -> str:
        text = (
            f"Plan: {self.count('create')} to add, {self.count('update')} to change, "
            f"{self.count('delete')} to destroy."
        )
        held = sum(1 for c in self.changes if c.held)
        if held:
            text += f" {held} held by an override."
        if self.blocked:
            text += f" {len(self.blocked)} blocked."
        return text

    # -- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "plan_id": self.plan_id,
            "created_at": self.created_at,
            "git_commit": self.git_commit,
            "desired_digest": self.desired_digest,
            "store": self.store,
            "summary": {
                "add": self.count("create"),
                "change": self.count("update"),
                "destroy": self.count("delete"),
                "unchanged": self.count("unchanged"),
                "held": sum(1 for c in self.changes if c.held),
                "blocked": len(self.blocked),
            },
            "changes": [_change_to_dict(c) for c in self.changes],
            "unmanaged": [{"kind": u.kind.label, "name": u.name} for u in self.unmanaged],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        version = data.get("format_version")
        if version != PLAN_FORMAT_VERSION:
            raise UserError(
                f"plan format_version {version!r} is not supported (expected "
                f"{PLAN_FORMAT_VERSION}); make the plan again with this version of reconcile"
            )
        try:
            return cls(
                plan_id=data["plan_id"],
                created_at=data["created_at"],
                git_commit=data.get("git_commit"),
                store=data["store"],
                changes=tuple(_change_from_dict(c) for c in data["changes"]),
                unmanaged=tuple(
                    Unmanaged(_kind(u["kind"]), u["name"]) for u in data.get("unmanaged", [])
                ),
                notes=tuple(data.get("notes", [])),
                desired_digest=_optional_text(data.get("desired_digest")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"the plan file is damaged or not a plan: {exc!r}") from None


def _optional_text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a string or null, not {value!r}")
    return value


def _kind(label: str) -> RecordKind:
    for kind in RecordKind:
        if kind.label == label:
            return kind
    raise ValueError(f"unknown record kind {label!r}")


def _change_to_dict(change: Change) -> dict[str, Any]:
    return {
        "kind": change.kind.label,
        "name": change.name,
        "action": change.action,
        "expected_version": change.expected_version,
        "desired_hash": change.desired_hash,
        "drift": change.drift,
        "blocked": change.blocked,
        "fields": [
            {"path": f.path, "kind": f.kind, "before": f.before, "after": f.after}
            for f in change.fields
        ],
        "risks": [
            {"code": r.code, "message": r.message, "users_affected": r.users_affected}
            for r in change.risks
        ],
        "holds": [{"owner": h.owner, "detail": h.detail, "since": h.since} for h in change.holds],
        "before": change.before,
        "after": change.after,
    }


def _change_from_dict(data: dict[str, Any]) -> Change:
    return Change(
        kind=_kind(data["kind"]),
        name=data["name"],
        action=data["action"],
        before=data.get("before"),
        after=data.get("after"),
        expected_version=data.get("expected_version"),
        desired_hash=data.get("desired_hash"),
        fields=tuple(
            FieldChange(f["path"], f.get("before"), f.get("after"), f.get("kind", "changed"))
            for f in data.get("fields", [])
        ),
        risks=tuple(
            Risk(r["code"], r["message"], r.get("users_affected")) for r in data.get("risks", [])
        ),
        holds=tuple(Hold(h["owner"], h["detail"], h.get("since")) for h in data.get("holds", [])),
        drift=bool(data.get("drift", False)),
        blocked=data.get("blocked"),
    )
