"""Risk classes of changes, with the share of users each moves.

A flag change's share comes from decisions, not fields: ``reconciler.plan.effect`` decides
every user before and after with the runtime's core (its strategy's schedule, targeting,
experiment and controller state included) and counts who gains the flag, who loses it and who
changes variant, now and at every step of a schedule in the next 24 hours. The users are all
users, exactly (by their buckets), for flags without targeting rules, and the synthetic
population of ``reconciler.plan.population`` for flags with them. Changes to a rollout strategy
or an experiment are assessed through the flag they act on, whose item embeds them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from reconciler.plan.effect import Assessment, Effect, assess
from reconciler.plan.model import Risk
from reconciler.runtime.bucketing import share_reassigned
from reconciler.runtime.rollout_state import RolloutStates
from reconciler.state.records import Item, RecordKind

ROLLOUT_JUMP_POINTS = 25
SAME = 1e-9  # shares closer than this are equal (sums of cell volumes)

Measure = Callable[[Effect], float]


def risks_of(
    kind: RecordKind,
    name: str,
    before: Item | None,
    after: Item | None,
    *,
    now: datetime | None = None,
    live: Item | None = None,
    rollouts: RolloutStates | None = None,
) -> list[Risk]:
    """The risks of one change. Items edited by hand may have any shape: never raises.

    ``now``: the plan's time (default: the clock's), from which schedules are read. ``live``:
    the record as stored, whose controller state acts on both sides of a flag change.
    """
    moment = now if now is not None else datetime.now(UTC)
    try:
        return _risks_of(kind, name, before, after, now=moment, live=live, rollouts=rollouts)
    except (AttributeError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
        return [Risk("risk-unknown", f"cannot assess this change of {name} ({exc}); review it")]


def _risks_of(
    kind: RecordKind,
    name: str,
    before: Item | None,
    after: Item | None,
    *,
    now: datetime,
    live: Item | None,
    rollouts: RolloutStates | None = None,
) -> list[Risk]:
    if kind is RecordKind.FLAG:
        assessment = assess(name, before, after, now, live=live, rollouts=rollouts)
        return list(_flag_risks(name, before, after, assessment))
    if kind is RecordKind.EXPERIMENT:
        return list(_experiment_risks(name, before, after))
    if kind is RecordKind.COST_THRESHOLD:
        return list(_cost_risks(name, before, after))
    if kind is RecordKind.ROLLOUT:
        return list(_rollout_risks(name, before, after))
    return []


def _flag_risks(
    name: str, before: Item | None, after: Item | None, assessment: Assessment
) -> Iterator[Risk]:
    if after is None:
        worst = assessment.worst(_lose)
        text = _over_time(assessment, _lose, lambda e: _decisions(e, name))
        yield Risk(
            "flag-deleted",
            f"deletes {name}: {text}; services fall back to their default or the flag's fail mode",
            worst.lose,
        )
        return
    was_on = before is not None and before.get("enabled") is True
    is_on = after.get("enabled") is True
    worst = assessment.worst(_moved)
    if was_on and not is_on:
        text = _over_time(assessment, _lose, lambda e: f"{_share(e.lose)} of users lose it")
        yield Risk("kill-switch-off", f"turns {name} OFF for everyone: {text}", worst.moved)
    elif is_on and not was_on:
        text = _over_time(assessment, _gain, lambda e: f"{_share(e.gain)} of users")
        yield Risk("kill-switch-on", f"turns {name} ON for {text}", worst.moved)
    elif worst.moved > SAME:
        jump = _most(assessment, _moved) * 100 >= ROLLOUT_JUMP_POINTS - SAME
        code = "rollout-jump" if jump else "rollout-change"
        text = _over_time(assessment, _moved, lambda e: _decisions(e, name))
        yield Risk(code, f"{_cause(before, after)}: {text}", worst.moved)
    elif was_on and is_on and _percentage(before) != _percentage(after):
        yield Risk(
            "rollout-change",
            f"{_rollout(before, after)}: no user's decision changes now or in the next 24 h "
            f"({_decider(after)} decides)",
            0.0,
        )
    switched = assessment.worst(_switch)
    if switched.switch > SAME:
        text = _over_time(
            assessment, _switch, lambda e: f"{_share(e.switch)} of users change variant of {name}"
        )
        yield Risk("traffic-reallocation", f"{_cause(before, after)}: {text}", switched.switch)
    yield from _removed_rules(name, before, after)
    yield from _lowered_or_removed(
        f"{name} cost_threshold", _get(before, "cost_threshold"), _get(after, "cost_threshold")
    )


def _gain(effect: Effect) -> float:
    return effect.gain


def _lose(effect: Effect) -> float:
    return effect.lose


def _moved(effect: Effect) -> float:
    return effect.moved


def _switch(effect: Effect) -> float:
    return effect.switch


def _most(assessment: Assessment, measure: Measure) -> float:
    """The largest share, of all users or of the users one targeting rule matches (a class of
    the synthetic population), at any moment of the window."""
    shares = [measure(e) for e in assessment.effects]
    shares.extend(measure(e) for _, effects in assessment.classes for e in effects)
    return max(shares)


def _over_time(assessment: Assessment, measure: Measure, render: Callable[[Effect], str]) -> str:
    """The effect now (for one class of the synthetic population when only it moves), then the
    worst moment of the next 24 hours when it is worse, and the population when synthetic."""
    now = assessment.now
    text = render(now) + _only_class(assessment, measure)
    if len(assessment.effects) > 1:
        worst = assessment.worst(measure)
        if measure(worst) > measure(now) + SAME:
            hours = (worst.at - now.at).total_seconds() / 3600
            text += (
                f" now; {render(worst)} at {worst.at.strftime('%Y-%m-%dT%H:%MZ')} "
                f"(in {hours:g} h), the most in the next 24 h"
            )
        else:
            text += " now, the most in the next 24 h"
    if assessment.method != "exact":
        text += "; users: the synthetic population of its targeting rules"
    return text


def _only_class(assessment: Assessment, measure: Measure) -> str:
    moving = [(c, effects[0]) for c, effects in assessment.classes if measure(effects[0]) > SAME]
    if len(moving) != 1 or moving[0][0].weight > 1 - SAME:
        return ""
    group, effect = moving[0]
    rule = group.rules[-1]
    who = f"those {rule} matches" if rule else "those no rule matches"
    return f" ({_share(measure(effect))} of {who})"


def _decisions(effect: Effect, name: str) -> str:
    parts = []
    if effect.gain > SAME:
        parts.append(f"{_share(effect.gain)} of users gain {name}")
    if effect.lose > SAME:
        parts.append(
            f"{_share(effect.lose)} lose it"
            if parts
            else f"{_share(effect.lose)} of users lose {name}"
        )
    return ", ".join(parts) or "no user's decision changes"


def _share(share: float) -> str:
    """70%, 80.6%, <0.1%: one decimal at most."""
    if share <= SAME:
        return "0%"
    if share < 0.0005:
        return "<0.1%"
    if share > 0.9995 and share < 1 - SAME:
        return ">99.9%"
    return f"{round(share * 100, 1):g}%"


def _cause(before: Item | None, after: Item) -> str:
    """What in the change moves users, in the reviewer's terms."""
    changed = {k for k in (before or {}).keys() | after.keys() if _get(before, k) != after.get(k)}
    causes = []
    if "rollout_percentage" in changed:
        causes.append(_rollout(before, after))
    if "rollout" in changed:
        old, new = _get(before, "rollout", "strategy_name"), _get(after, "rollout", "strategy_name")
        if old is None:
            causes.append(f"rollout strategy {new} now drives it")
        elif new is None:
            causes.append(f"rollout strategy {old} no longer drives it")
        else:
            causes.append(f"the schedule of rollout strategy {new}")
    if "targeting" in changed:
        causes.append("its targeting")
    if "ab_test_config" in changed:
        old, new = (
            _get(before, "ab_test_config", "test_name"),
            _get(after, "ab_test_config", "test_name"),
        )
        causes.append(f"experiment {new or old}")
    return " and ".join(causes) or "this change"


def _rollout(before: Item | None, after: Item) -> str:
    return f"rollout {_percentage(before):g}% -> {_percentage(after):g}%"


def _percentage(item: Item | None) -> float:
    return float((item or {}).get("rollout_percentage", 100))


def _decider(after: Item) -> str:
    strategy = _get(after, "rollout", "strategy_name")
    if strategy is not None:
        return f"rollout strategy {strategy}'s schedule"
    return "its targeting"


def _rollout_risks(name: str, before: Item | None, after: Item | None) -> Iterator[Risk]:
    if before is not None and after is None:
        yield Risk("rollout-removed", f"removes rollout strategy {name}")
        return
    if before is None or after is None:
        return  # a new strategy: its flag's change (it embeds it) shows the users it moves
    if before.get("active", True) is False and after.get("active", True) is False:
        return  # drives no flag, before or after
    fields = ("configuration", "rollout_type", "active", "feature_flag")
    if any(_get(before, f) != after.get(f) for f in fields):
        flag = after.get("feature_flag")
        yield Risk(
            "rollout-schedule-changed",
            f"changes how {flag} ramps: the users it moves are on flag/{flag}",
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
