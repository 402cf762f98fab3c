"""Risk classes of flag changes, with the share of users each moves (from the bucketing)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from reconciler.plan.model import Risk
from reconciler.runtime.bucketing import share_reassigned
from reconciler.state.records import Item, RecordKind

ROLLOUT_JUMP_POINTS = 25


def risks_of(kind: RecordKind, name: str, before: Item | None, after: Item | None) -> list[Risk]:
    """The risks of one change. Items edited by hand may have any shape: never raises."""
    try:
        return _risks_of(kind, name, before, after)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return [Risk("risk-unknown", f"cannot assess this change of {name} ({exc}); review it")]


def _risks_of(kind: RecordKind, name: str, before: Item | None, after: Item | None) -> list[Risk]:
    if kind is RecordKind.FLAG:
        return list(_flag_risks(name, before, after))
    if kind is RecordKind.EXPERIMENT:
        return list(_experiment_risks(name, before, after))
    if kind is RecordKind.COST_THRESHOLD:
        return list(_cost_risks(name, before, after))
    if kind is RecordKind.ROLLOUT and before is not None and after is None:
        return [Risk("rollout-removed", f"removes rollout strategy {name}")]
    return []


def _flag_risks(name: str, before: Item | None, after: Item | None) -> Iterator[Risk]:
    if after is None:
        yield Risk(
            "flag-deleted",
            f"deletes {name}: services fall back to their default or the flag's fail mode",
            1.0,
        )
        return
    was_on = bool(before and before.get("enabled"))
    share = float(after.get("rollout_percentage", 100)) / 100
    if before is not None and was_on and not after.get("enabled"):
        yield Risk("kill-switch-off", f"turns {name} OFF for everyone (100% of users)", 1.0)
    elif after.get("enabled") and not was_on:
        yield Risk("kill-switch-on", f"turns {name} ON for {share:.0%} of users", share)
    if before is not None and before.get("enabled") and after.get("enabled"):
        old = float(before.get("rollout_percentage", 100))
        new = float(after.get("rollout_percentage", 100))
        if old != new:
            moved = abs(new - old) / 100
            code = "rollout-jump" if abs(new - old) >= ROLLOUT_JUMP_POINTS else "rollout-change"
            yield Risk(
                code,
                f"rollout {old:g}% -> {new:g}%: {moved:.0%} of users change decision",
                moved,
            )
    yield from _removed_rules(name, before, after)
    yield from _lowered_or_removed(
        f"{name} cost_threshold", _get(before, "cost_threshold"), _get(after, "cost_threshold")
    )


def _removed_rules(name: str, before: Item | None, after: Item) -> Iterator[Risk]:
    def rules(item: Item | None) -> dict[str, Any]:
        targeting = (item or {}).get("targeting") or {}
        return {r["name"]: r for r in targeting.get("rules", [])}

    old, new = rules(before), rules(after)
    for rule_name in sorted(old.keys() - new.keys()):
        action = old[rule_name].get("action")
        effect = (
            "users it excluded may now get" if action == "exclude" else "users it included may lose"
        )
        yield Risk("targeting-rule-removed", f"removes targeting rule {rule_name}: {effect} {name}")


def _experiment_risks(name: str, before: Item | None, after: Item | None) -> Iterator[Risk]:
    if before is None or after is None:
        return
    old = [(v["name"], float(v["weight"])) for v in before.get("variants", [])]
    new = [(v["name"], float(v["weight"])) for v in after.get("variants", [])]
    if old != new and old and new:
        moved = share_reassigned(old, new)
        if moved > 0:
            yield Risk(
                "traffic-reallocation",
                f"moves {moved:.0%} of {name}'s users to another variant",
                moved,
            )
    if before.get("status") != after.get("status"):
        status = after.get("status")
        if status == "concluded":
            yield Risk(
                "experiment-concluded",
                f"concludes {name}: everyone gets the variant {after.get('winner')}",
            )
        elif before.get("status") == "active":
            yield Risk("experiment-stopped", f"stops assigning {name} (status {status})")
        elif status == "active":
            control = after.get("control") or (new[0][0] if new else "")
            treated = sum(w for v, w in new if v != control) / 100
            share = treated * float(after.get("traffic_percentage", 100)) / 100
            others = ", ".join(v for v, _ in new if v != control)
            yield Risk(
                "experiment-started",
                f"starts {name}: {share:.0%} of its flag's users get {others} instead of {control}",
                share,
            )


def _cost_risks(name: str, before: Item | None, after: Item | None) -> Iterator[Risk]:
    if before is None:
        return
    if after is None or (before.get("enabled", True) and not after.get("enabled", True)):
        yield Risk("cost-threshold-removed", f"removes cost threshold {name}: no spend limit")
        return
    for limit in ("throttle", "emergency"):
        yield from _lowered_or_removed(
            f"{name} {limit}", _get(before, limit, "amount_usd"), _get(after, limit, "amount_usd")
        )


def _lowered_or_removed(label: str, old: Any, new: Any) -> Iterator[Risk]:
    if old is None:
        return
    if new is None:
        yield Risk("cost-threshold-removed", f"removes {label} ({old:g} USD): no spend limit")
    elif float(new) < float(old):
        yield Risk(
            "cost-threshold-lowered",
            f"lowers {label} from {old:g} to {new:g} USD: may throttle or shut down at once",
        )
    elif float(new) > float(old):
        yield Risk("cost-threshold-raised", f"raises {label} from {old:g} to {new:g} USD")


def _get(item: Item | None, *keys: str) -> Any:
    value: Any = item
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
