"""The evaluation core: one decision, a pure function of (snapshot, flag, context, now).

No I/O, no clock of its own, and no exception out of it. The order is the design's:
shutdowns, unknown flag, kill switch, cost, targeting, rollout, experiment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from reconciler.runtime.bucketing import pick_variant
from reconciler.runtime.decision import Decision, ErrorCode, Reason
from reconciler.runtime.experiment_state import STOPPED
from reconciler.runtime.rollout_state import ROLLED_BACK, Entry, Strategy, serve, valid_until
from reconciler.runtime.snapshot import Experiment, Flag, Snapshot

UNIT_ATTRIBUTE = "user_id"
OUTSIDE_SCOPE = "outside the rollout's targeting"
_ROLLOUT = ("rollout",)  # the key of a flag's rollout position in its decisions cache
_ASSIGNED = "assigned"  # with the matched rule: the key of a flag's assigned decisions


def evaluate(
    snapshot: Snapshot | None,
    flag_name: str,
    context: Mapping[str, Any],
    now: datetime | Callable[[], datetime],
) -> Decision:
    """The decision for ``flag_name`` and this context at ``now``. Never raises.

    ``now`` is a time, or a function that gives it: the core asks only when the decision
    depends on time (a shutdown's expiry, a rollout schedule), which most decisions do not.
    """
    name = flag_name
    try:  # one frame: the body is the request path of every decision
        if snapshot is None:
            return Decision(name, False, Reason.ERROR, error_code=ErrorCode.NO_SNAPSHOT)
        version = snapshot.version
        flag = snapshot.flags.get(name)
        if snapshot.global_shutdown is not None and snapshot.global_shutdown.active(_time(now)):
            held = snapshot.global_shutdown
            detail = f"global shutdown by {held.by}: {held.reason}"
            if flag is not None:  # the same value as any other "off": False for a boolean flag
                return _off(flag, Reason.EMERGENCY_SHUTDOWN, version, detail=detail)
            return Decision(  # a flag this snapshot does not know: its type is unknown too
                name, False, Reason.EMERGENCY_SHUTDOWN, snapshot_version=version, detail=detail
            )
        if flag is None:
            return Decision(
                name,
                False,
                Reason.ERROR,
                snapshot_version=version,
                error_code=ErrorCode.FLAG_NOT_FOUND,
            )
        if snapshot.flag_shutdowns or flag.shutdown is not None:
            shutdown = snapshot.flag_shutdowns.get(name)  # an operator's, then the manifest's
            if shutdown is None or not shutdown.active(_time(now)):
                shutdown = flag.shutdown
                if shutdown is not None and not shutdown.active(_time(now)):
                    shutdown = None
            if shutdown is not None:
                detail = f"shutdown by {shutdown.by}: {shutdown.reason}"
                return _off(flag, Reason.EMERGENCY_SHUTDOWN, version, detail=detail)
        if flag.broken is not None:
            return Decision(
                name,
                flag.fail_open,
                Reason.ERROR,
                flag.value if flag.fail_open else None,
                snapshot_version=version,
                error_code=ErrorCode.GENERAL,
                detail=flag.broken,
            )
        if not flag.enabled:
            return _off(flag, Reason.DISABLED, version)

        factor, throttled = 1.0, False
        verdict = snapshot.cost.get(name) if snapshot.cost else None  # the cost guard's
        while verdict is not None and verdict.until is not None and _time(now) >= verdict.until:
            verdict = verdict.then  # its period is over: the next verdict, if one still holds
        if verdict is not None:
            if verdict.emergency is not None:
                return _off(flag, Reason.COST_EMERGENCY, version, detail=verdict.emergency)
            factor, throttled = verdict.factor, True

        matched, rule_percentage = None, None
        for rule in flag.rules:
            if rule.predicate(context):
                if not rule.include:
                    return _off(flag, Reason.TARGETING_MATCH, version, rule=rule.name)
                matched, rule_percentage = rule.name, rule.rollout_percentage
                break
        else:
            if not flag.default_include:
                return _off(flag, Reason.TARGETING_NO_MATCH, version)

        if flag.schedule is None:
            percentage = flag.rollout_percentage if rule_percentage is None else rule_percentage
        else:
            served = _rollout(flag, flag.schedule, _time(now))
            if served.state == ROLLED_BACK:  # rolled back for everyone, the rules' users too
                return _off(flag, Reason.ROLLOUT_OUT, version, rule=matched, detail=served.reason)
            if rule_percentage is not None:
                percentage = rule_percentage
            elif flag.schedule.scope is not None and not flag.schedule.scope.covers(context):
                return _off(flag, Reason.ROLLOUT_OUT, version, rule=matched, detail=OUTSIDE_SCOPE)
            else:
                percentage = served.percentage
        unit = context.get(UNIT_ATTRIBUTE)
        if percentage < 100 or throttled:
            if unit is None or unit == "":
                return _off(
                    flag,
                    Reason.ROLLOUT_OUT,
                    version,
                    rule=matched,
                    error=ErrorCode.TARGETING_KEY_MISSING,
                )
            if percentage < 100 and flag.rollout_bucket.bucket(str(unit)) * 100 >= percentage:
                return _off(flag, Reason.ROLLOUT_OUT, version, rule=matched)
            # The throttle keeps the units of the lowest cost buckets, salted by request type:
            # the same units should_allow_request admits, whichever flag they come through.
            if throttled and flag.cost_bucket.bucket(str(unit)) >= factor:
                return _off(flag, Reason.COST_THROTTLED, version, rule=matched)

        experiment = flag.experiment
        if experiment is not None and unit not in (None, ""):
            if experiment.assigning and experiment.traffic >= 100:  # the commonest: one hash
                assigned = flag.decisions.get((_ASSIGNED, matched))
                if assigned is None:
                    assigned = _assigned(flag, experiment, version, matched)
                position = experiment.assignment.bucket(str(unit))
                for end, decision in assigned:
                    if position < end:
                        return decision
            decided = _experiment(
                flag, experiment, str(unit), version=version, matched=matched, now=now
            )
            if decided is not None:
                return decided
        if matched is not None:
            reason = Reason.TARGETING_MATCH
        elif percentage < 100:
            reason = Reason.ROLLOUT_IN
        else:
            reason = Reason.DEFAULT
        return _on(flag, reason, version, matched)
    except Exception as exc:  # the promise: no exception reaches the request path
        return Decision(name, False, Reason.ERROR, error_code=ErrorCode.GENERAL, detail=repr(exc))


def _experiment(
    flag: Flag,
    experiment: Experiment,
    unit: str,
    *,
    version: str,
    matched: str | None,
    now: datetime | Callable[[], datetime],
) -> Decision | None:
    """The experiment's part: an operator's stop; else git's winner; else, while git says
    active, the analyser's verdict, or between the start and the end the unit's variant."""
    if experiment.assigning:  # the common case, first: no hold, no time window, active
        if (
            experiment.traffic < 100
            and experiment.sampling.bucket(unit) * 100 >= experiment.traffic
        ):
            return _on(
                flag,
                Reason.EXPERIMENT_EXCLUDED,
                version,
                matched,
                variant=experiment.control,
                experiment=experiment,
                detail="outside the experiment's traffic",
            )
        variant = pick_variant(experiment.assignment.bucket(unit), experiment.ranges)
        return _on(
            flag,
            Reason.EXPERIMENT_ASSIGNED,
            version,
            matched,
            variant=variant or experiment.control,
            experiment=experiment,
        )

    def serve(reason: Reason, variant: str | None, detail: str = "") -> Decision:
        return _on(
            flag, reason, version, matched, variant=variant, experiment=experiment, detail=detail
        )

    hold = experiment.hold
    if hold is not None and hold.operator:  # an operator's stop outranks git and the analyser
        return serve(Reason.EXPERIMENT_EXCLUDED, experiment.control, hold.describe())
    if experiment.status == "concluded" and experiment.winner:
        return serve(Reason.EXPERIMENT_CONCLUDED, experiment.winner)
    if hold is not None and experiment.status == "active":  # the analyser's verdict
        if hold.state == STOPPED:
            return serve(Reason.EXPERIMENT_EXCLUDED, experiment.control, hold.describe())
        return serve(Reason.EXPERIMENT_CONCLUDED, hold.winner, hold.describe())
    if experiment.status != "active":
        return None
    if experiment.timed:
        moment = _time(now)
        if experiment.start is not None and moment < experiment.start:
            return serve(Reason.EXPERIMENT_EXCLUDED, experiment.control, "not started yet")
        if experiment.end is not None and moment >= experiment.end:
            return serve(Reason.EXPERIMENT_EXCLUDED, experiment.control, "ended")
    if experiment.traffic < 100 and (experiment.sampling.bucket(unit) * 100 >= experiment.traffic):
        return serve(
            Reason.EXPERIMENT_EXCLUDED, experiment.control, "outside the experiment's traffic"
        )
    variant = pick_variant(experiment.assignment.bucket(unit), experiment.ranges)
    return serve(Reason.EXPERIMENT_ASSIGNED, variant or experiment.control)


def _assigned(
    flag: Flag, experiment: Experiment, version: str, matched: str | None
) -> tuple[tuple[float, Decision], ...]:
    """Each variant's decision with the end of its range, in order (the ranges are contiguous
    from 0): the first whose end is above the unit's position is ``pick_variant``'s. A position
    past the last end (rounding) is left to ``_experiment``. Made once per flag and rule;
    empty (every decision left to ``_experiment``) for ranges that are not so."""
    ranges = experiment.ranges
    starts = [0.0, *(end for _, _, end in ranges)]
    contiguous = all(
        start == starts[k] and start <= end for k, (_, start, end) in enumerate(ranges)
    )
    found = flag.decisions[(_ASSIGNED, matched)] = tuple(
        (
            end,
            _on(
                flag,
                Reason.EXPERIMENT_ASSIGNED,
                version,
                matched,
                variant=name or experiment.control,
                experiment=experiment,
            ),
        )
        for name, _, end in (ranges if contiguous else ())
    )
    return found


def _time(now: datetime | Callable[[], datetime]) -> datetime:
    moment = now() if callable(now) else now
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # naive: UTC


def _rollout(flag: Flag, strategy: Strategy, now: datetime) -> Entry:
    """Where the flag's rollout is now (``rollout_state.serve``), kept with the flag until it
    next changes: most decisions of a rolled-out flag do not compute it."""
    cached = flag.decisions.get(_ROLLOUT)
    if cached is not None and cached[1] <= now < cached[2]:
        return cached[0]  # type: ignore[no-any-return]
    entry, actions = flag.rollout_entry, flag.rollout_actions
    served = serve(strategy, entry, actions, now)
    flag.decisions[_ROLLOUT] = (served, now, valid_until(strategy, entry, actions, served))
    return served


def off_value(flag: Flag) -> Any:
    """The value of every decision that turns ``flag`` off, whatever the reason (a shutdown,
    global or of the flag, the kill switch, cost, targeting, rollout): ``False`` for a boolean
    flag; ``None`` for the others, so the caller's default applies."""
    return False if flag.flag_type == "boolean" else None


def variant_value(flag: Flag, config: Mapping[str, Any]) -> Any:
    """The value a non-boolean flag serves with a variant whose configuration is ``config``.

    In this order: the config's ``value`` entry, when it has the flag's type; else the config's
    only entry, when it has exactly one and that has the flag's type (``{"model": "gemini-pro"}``
    serves ``"gemini-pro"`` from a string flag); for a ``json`` flag, else the config itself,
    when it is not empty; else the flag's own value. A boolean flag serves its value with every
    variant: the variant and its config are in the decision beside it.
    """
    if flag.flag_type == "boolean":
        return flag.value
    if "value" in config and _has_type(flag.flag_type, config["value"]):
        return config["value"]
    if len(config) == 1:
        [only] = config.values()
        if _has_type(flag.flag_type, only):
            return only
    if flag.flag_type == "json" and config:
        return dict(config)
    return flag.value


def _has_type(flag_type: str, value: Any) -> bool:
    if flag_type == "string":
        return isinstance(value, str)
    if flag_type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if flag_type == "json":
        return isinstance(value, Mapping | list)
    return False


def _off(
    flag: Flag,
    reason: Reason,
    version: str,
    *,
    rule: str | None = None,
    detail: str = "",
    error: ErrorCode | None = None,
) -> Decision:
    # A Flag belongs to one configuration snapshot, so its version needs no place in the key.
    key = (reason, rule) if not detail and error is None else (reason, rule, detail, error)
    cached = flag.decisions.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    value = off_value(flag)
    decision = flag.decisions[key] = Decision(
        flag.name,
        False,
        reason,
        value,
        matched_rule=rule,
        snapshot_version=version,
        detail=detail,
        error_code=error,
    )
    return decision


def _on(
    flag: Flag,
    reason: Reason,
    version: str,
    rule: str | None,
    *,
    variant: str | None = None,
    experiment: Experiment | None = None,
    detail: str = "",
) -> Decision:
    key = (True, reason, rule, variant, detail)
    cached = flag.decisions.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    config = experiment.configs.get(variant, {}) if experiment and variant else {}
    decision = flag.decisions[key] = Decision(
        flag.name,
        True,
        reason,
        variant_value(flag, config) if variant else flag.value,
        variant=variant,
        variant_config=config,
        matched_rule=rule,
        experiment=experiment.experiment_id if experiment else None,
        snapshot_version=version,
        detail=detail,
    )
    return decision
