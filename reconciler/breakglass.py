"""Break-glass: the on-call operator's emergency shutdown, which outranks git.

Shutdowns live in one record of the control table (``overrides``) that every runtime client
polls every few seconds. ``reconcile`` never writes it. Every change is a conditional write on
the record's version, with an audit entry in the same atomic step; a second shutdown of what is
already shut down keeps the first one's start time and adds to its history. A flag is shut down
only by a name the store has a record of (a typo is refused with the closest names), unless the
operator forces it: a flag not applied yet can be shut down ahead of its first apply.
"""

from __future__ import annotations

import difflib
import getpass
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.errors import UserError
from reconciler.runtime.sources import overrides_from_item
from reconciler.state.records import OVERRIDES_RECORD, AuditEntry, Item, RecordKind, format_time
from reconciler.state.store import StateStore, WriteConflictError

GLOBAL = "global"
ATTEMPTS = 5
HISTORY = 20
DURATION = re.compile(r"^(\d{1,12})([smhd])$")  # 13 digits or more: refused as no duration
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
LONGEST = timedelta(days=366)  # a shutdown for longer is one until restored: say so
FLAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,127}$")  # the flag schema's pattern
MAX_TEXT = 500
# Characters that change how text reads without being seen: bidirectional overrides and
# isolates (U+202A-U+202E, U+2066-U+2069). Other format characters (zero-width joiners in an
# emoji) are allowed, but text made of nothing else is empty.
_BIDI = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))


@dataclass(frozen=True)
class Active:
    """One shutdown in force: everything (``target`` is ``global``) or one flag."""

    target: str
    by: str
    reason: str
    since: str
    expires_at: str | None
    history: tuple[dict[str, Any], ...] = ()


class UnknownFlagError(UserError):
    """Flag names the store has no record of (a typo, most likely): nothing was written."""

    def __init__(self, unknown: Mapping[str, Sequence[str]], force: str | None = "--force") -> None:
        self.unknown = {name: tuple(close) for name, close in unknown.items()}
        self.force = force
        names = "; ".join(
            f"{name!r}" + (f" (did you mean {_either(close)}?)" if close else "")
            for name, close in self.unknown.items()
        )
        how = (
            f"; to shut down a flag that is not applied yet, give {force}"
            if force is not None
            else ""
        )
        plural = "s" if len(self.unknown) > 1 else ""
        super().__init__(f"no flag{plural} {names} in the store: nothing was written{how}")


class BusyError(UserError):
    """The overrides record kept changing under a write, or writers queued too long: nothing
    was written; trying again is safe."""


def _either(names: Sequence[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def unknown_flags(store: StateStore, names: Sequence[str]) -> dict[str, list[str]]:
    """The names that are neither a flag in the store nor a flag shutdown already recorded
    (one forced ahead of its flag, or of a flag since deleted), each with the closest of those
    names, best first; empty when every name is known."""
    known = set(store.read_records(RecordKind.FLAG))
    missing = [name for name in dict.fromkeys(names) if name not in known]
    if not missing:
        return {}
    known |= {str(name) for name in (store.read_overrides() or {}).get("flags") or {}}
    candidates = sorted(known)
    return {
        name: difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
        for name in missing
        if name not in known
    }


def parse_expiry(text: str | None, now: datetime, option: str = "--expires") -> str | None:
    """``30m``, ``2h``, ``1d`` from now, or an RFC 3339 time, later than now and at most
    366 days on; None: until restored."""
    if not text:
        return None
    match = DURATION.match(text.strip())
    if match:
        seconds = int(match[1]) * SECONDS[match[2]]  # an int: no overflow, however long
        if seconds <= 0:
            raise UserError(f"{option} {text!r}: a shutdown must last longer than that")
        if seconds > LONGEST.total_seconds():
            raise UserError(
                f"{option} {text!r}: at most {LONGEST.days}d; leave it out for a shutdown that "
                "holds until it is restored"
            )
        return format_time(now + timedelta(seconds=seconds))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"{option} {text!r}: give a duration such as 30m, 2h or 1d, or a time such as "
            "2026-01-09T06:00:00Z"
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment <= now:
        raise UserError(f"{option} {text!r} is in the past")
    if moment - now > LONGEST:
        raise UserError(
            f"{option} {text!r} is more than {LONGEST.days} days away; leave it out for a "
            "shutdown that holds until it is restored"
        )
    return format_time(moment)


def check_text(text: str, what: str) -> str:
    """``text`` without surrounding whitespace, if people can read it as it is stored: not
    empty or invisible, no control characters (escape sequences that would rewrite an
    operator's terminal, line breaks that forge lines of a log), no bidirectional overrides,
    at most ``MAX_TEXT`` characters. Otherwise a ``UserError`` naming ``what``."""
    stripped = text.strip()
    visible = [c for c in stripped if unicodedata.category(c) not in ("Cf", "Zs", "Zl", "Zp")]
    if not visible:
        raise UserError(f"{what} is required: say it in words, for whoever reads the trail later")
    bad = next(
        (c for c in stripped if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI),
        None,
    )
    if bad is not None:
        raise UserError(
            f"{what} contains the unprintable character U+{ord(bad):04X}: use plain text on "
            "one line"
        )
    if len(stripped) > MAX_TEXT:
        raise UserError(f"{what} is {len(stripped)} characters long: at most {MAX_TEXT}")
    return stripped


def check_flag_names(names: Sequence[str]) -> list[str]:
    """The names, in order and once each, if each could be a flag's (the flag schema's
    pattern); otherwise a ``UserError`` naming the first that cannot."""
    for name in names:
        if not FLAG_NAME.fullmatch(name):
            shown = printable(name) or "(empty)"
            raise UserError(
                f"'{shown}' is not a flag name: a letter, then letters, digits, '_' or '-' "
                "(at most 128)"
            )
    return list(dict.fromkeys(names))


def printable(text: object) -> str:
    """Stored text as it can be shown on a terminal or page: control and format characters
    (and bidirectional overrides) escaped, as they may have been stored by an older writer."""
    shown = str(text)
    return "".join(
        c
        if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp") and c not in _BIDI
        else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in shown
    )


def default_operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def active(store: StateStore, now: datetime) -> list[Active]:
    """The shutdowns in force now (expired ones are not), read as the runtime reads them."""
    record = store.read_overrides() or {}
    in_force = overrides_from_item(record).in_force(now)
    held = (
        [(GLOBAL, in_force.global_shutdown, record.get(GLOBAL))] if in_force.global_shutdown else []
    )
    flags = record.get("flags") or {}
    held += [(name, s, flags.get(name)) for name, s in sorted(in_force.flags.items())]
    return [
        Active(
            target,
            shutdown.by,
            shutdown.reason,
            shutdown.since or "",
            shutdown.expires_at,
            tuple((raw or {}).get("history", [])),
        )
        for target, shutdown, raw in held
        if shutdown is not None
    ]


def shutdown(
    store: StateStore,
    targets: Sequence[str] | None,
    *,
    reason: str,
    by: str,
    expires_at: str | None,
    now: datetime,
    force: bool = False,
) -> list[Active]:
    """Shut everything (``targets`` None) or the named flags down; returns what is now held.

    A name the store has no flag record of is refused (``UnknownFlagError``, nothing written)
    unless ``force``: the flag may not be applied yet, and the shutdown then holds it from
    its first apply."""
    reason, by = check_text(reason, "a reason"), check_text(by, "who is acting")
    if targets is not None:
        if not targets:
            raise UserError("name at least one flag, or none for every AI feature")
        targets = check_flag_names(targets)
    if targets is not None and not force:
        unknown = unknown_flags(store, targets)
        if unknown:
            raise UnknownFlagError(unknown)
    at = format_time(now)

    def change(record: Item) -> Item:
        for target in targets or [GLOBAL]:
            table = record if target == GLOBAL else record.setdefault("flags", {})
            key = GLOBAL if target == GLOBAL else target
            previous = table.get(key) if isinstance(table.get(key), dict) else None
            still = previous is not None and (
                previous.get("expires_at") is None or str(previous["expires_at"]) > at
            )
            history = list(previous.get("history", [])) if still and previous else []
            history = [*history, {"by": by, "reason": reason, "at": at}][-HISTORY:]
            table[key] = {
                "by": by if not still or previous is None else previous.get("by", by),
                "reason": reason,
                "since": previous["since"] if still and previous else at,
                "history": history,
                **({"expires_at": expires_at} if expires_at else {}),
            }
        return record

    update_overrides(store, change, action="shutdown", actor=by, reason=reason, now=now)
    wanted = set(targets or [GLOBAL])
    return [a for a in active(store, now) if a.target in wanted]


def restore(
    store: StateStore, targets: Sequence[str] | None, *, reason: str, by: str, now: datetime
) -> list[str]:
    """Lift the shutdown of everything (``targets`` None) or of the named flags; returns what
    was lifted (nothing, if nothing was held: restore is idempotent too)."""
    reason, by = check_text(reason, "a reason"), check_text(by, "who is acting")
    if targets is not None:
        if not targets:
            raise UserError("name at least one flag, or none for every AI feature")
        targets = check_flag_names(targets)
        unknown = unknown_flags(store, targets)  # a typo lifts nothing and says so
        if unknown:
            raise UnknownFlagError(unknown, force=None)
    lifted: list[str] = []

    def change(record: Item) -> Item | None:
        lifted.clear()
        for target in targets or [GLOBAL]:
            if target == GLOBAL:
                if record.pop(GLOBAL, None) is not None:
                    lifted.append(GLOBAL)
            elif (record.get("flags") or {}).pop(target, None) is not None:
                lifted.append(target)
        return record if lifted else None  # nothing held: nothing to write or audit

    update_overrides(store, change, action="restore", actor=by, reason=reason, now=now)
    return lifted


def update_overrides(
    store: StateStore, change: Any, *, action: str, actor: str, reason: str, now: datetime
) -> None:
    """Read, change and write the record conditionally on its version, again if it moved.

    Each write carries an id: a write whose answer was lost fails its retry's condition, and
    the next read finds that id, so the change is not made (and audited) twice."""
    if not reason.strip():
        raise UserError("a reason is required: say why, for whoever reads the trail later")
    tried: str | None = None
    for _ in range(ATTEMPTS):
        before = store.read_overrides() or {}
        if tried is not None and before.get("write_id") == tried:
            return  # the last attempt landed; only its answer was lost
        version = int(before.get("version", 0))
        after = change({k: _copy(v) for k, v in before.items() if k != "record_id"})
        if after is None:
            return
        tried = after["write_id"] = uuid.uuid4().hex
        after["version"] = version + 1
        after["updated_at"] = format_time(now)
        audit = AuditEntry(
            record=OVERRIDES_RECORD,
            action=action,
            actor=actor,
            at=format_time(now),
            reason=reason,
            before={k: v for k, v in before.items() if k != "record_id"} or None,
            after=after,
        )
        try:
            store.write_overrides(after, version, audit)
            return
        except WriteConflictError:
            continue  # another operator wrote meanwhile: apply this change on top of theirs
    raise BusyError("the overrides record kept changing under this command; run it again")


def scope(entry: Item) -> list[str]:
    """What one audit entry of the overrides record shut down or restored: ``global`` and the
    flag names whose shutdown it added, renewed or lifted, read from its before and after."""
    before, after = entry.get("before"), entry.get("after")
    before, after = (x if isinstance(x, dict) else {} for x in (before, after))
    touched = [GLOBAL] if before.get(GLOBAL) != after.get(GLOBAL) else []
    old, new = (x if isinstance(x, dict) else {} for x in (before.get("flags"), after.get("flags")))
    return touched + sorted(name for name in {*old, *new} if old.get(name) != new.get(name))


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@dataclass(frozen=True)
class DrillResult:
    flag: str
    to_off: float  # seconds from the shutdown until the client decided EMERGENCY_SHUTDOWN
    to_on: float  # seconds from the restore until it no longer did


def drill(
    store: StateStore,
    client: Any,
    flag: str,
    *,
    by: str,
    timeout: float = 60.0,
    clock: Any = None,
) -> DrillResult:
    """Shut ``flag`` down, time how long ``client`` (a runtime FlagClient polling the same
    store) takes to obey, restore it, and time that too."""
    import time  # noqa: PLC0415 - only the drill waits

    from reconciler.runtime.decision import Reason  # noqa: PLC0415

    now = clock or (lambda: datetime.now(UTC))
    context = {"user_id": "breakglass-drill"}

    def wait(held: bool) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            shut = client.decide(flag, context).reason is Reason.EMERGENCY_SHUTDOWN
            if shut == held:
                return time.perf_counter() - started
            time.sleep(0.01)
        raise UserError(f"the client did not {'obey' if held else 'recover'} within {timeout:g} s")

    if any(a.target in (flag, GLOBAL) for a in active(store, now())):
        raise UserError(f"{flag} is already shut down: a drill would lift a real shutdown")
    unknown = unknown_flags(store, [flag])
    if unknown:  # a client has no decision to obey for a flag it does not know
        raise UnknownFlagError(unknown, force=None)
    shutdown(store, [flag], reason="break-glass drill", by=by, expires_at=None, now=now())
    try:
        to_off = wait(held=True)
    finally:
        restore(store, [flag], reason="break-glass drill over", by=by, now=now())
    return DrillResult(flag, to_off, wait(held=False))


@dataclass(frozen=True)
class CostHold:
    """A flag the cost guard holds (another owner than break-glass: restore does not lift it)."""

    flag: str
    state: str  # throttled | emergency
    budget: str
    factor: float
    until: str


def cost_holds(store: StateStore, now: datetime) -> list[CostHold]:
    """The flags the cost guard throttles or shuts down now, read as the runtime reads them."""
    from reconciler.runtime.cost_state import (  # noqa: PLC0415
        COST_GUARD_ID,
        cost_state_from_item,
        with_flags,
    )

    state = cost_state_from_item(store.read_control(COST_GUARD_ID))
    if not state.budgets:
        return []
    flags = store.read_records(RecordKind.FLAG).values()
    held = with_flags(state, [r.name for r in flags if r.item.get("request_type")], now).flags
    return [
        CostHold(name, f.state, f.budget, f.factor, f.until) for name, f in sorted(held.items())
    ]
