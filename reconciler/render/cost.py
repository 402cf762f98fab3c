"""The cost report for a terminal (a bar per budget limit) and for a pull request or a wiki
(markdown). Money is printed to the cent from exact micro-dollars."""

from __future__ import annotations

from collections.abc import Iterator

from reconciler.controllers.report import BudgetRow, CostReport
from reconciler.runtime.budgets import format_usd

BAR = 30
LEVEL_TEXT = {
    "ok": "ok",
    "warning": "WARNING (alerted)",
    "throttled": "THROTTLED",
    "emergency": "EMERGENCY SHUTDOWN",
}


def bar(share: float, width: int = BAR) -> str:
    """``[#########.....]`` filled to ``share`` of the limit; ``>`` marks spend past it."""
    filled = min(round(share * width), width)
    return "[" + "#" * filled + "." * (width - filled) + ("]" if share <= 1 else ">")


def _per_request(micros: int, requests: int) -> str:
    if not requests:
        return "-"
    return f"${micros / requests / 1_000_000:.4f}"


def render_text(report: CostReport) -> Iterator[str]:
    if report.live:
        yield (
            f"AI spend on {report.date} (UTC), live, from the services' flushed totals; "
            f"read {report.read_at}"
        )
        state = (
            f"version {report.state_version}, updated {report.state_updated_at}"
            if report.state_version
            else "none yet: run `controller run`"
        )
        yield f"Cost guard state: {state}"
    else:
        yield f"AI spend on {report.date} (UTC), from the cost-metrics rows the guard wrote"
    yield ""
    yield f"{'request type':<24} {'spend':>14} {'requests':>10} {'tokens':>12} {'per request':>12}"
    for row in report.types:
        yield (
            f"{row.request_type:<24} {format_usd(row.cost_micros):>14} {row.requests:>10,} "
            f"{row.tokens:>12,} {_per_request(row.cost_micros, row.requests):>12}"
        )
    if not report.types:
        yield "(no spend recorded)" if report.live else "(no spend recorded on that day)"
    yield f"{'total':<24} {format_usd(report.total_micros):>14}"
    yield ""
    for budget in report.budgets:
        yield from _budget_text(budget)
    if report.held:
        yield "Flags held by the cost guard:"
        for held in report.held:
            what = "off" if held.state == "emergency" else f"rollout x {held.factor:g}"
            yield f"  {held.flag}: {what} ({held.budget}) until {held.until}"
        yield ""
    if report.alerts:
        yield "Alerts this period:"
        for alert in report.alerts:
            out = "sent to SNS" if alert.get("published") else "not sent to SNS"
            yield f"  {alert.get('at')}  {alert.get('message')} [{out}]"
        yield ""
    if report.overshoot is not None:
        o = report.overshoot
        yield f"Overshoot bound: spend can pass a limit by at most {o.bound_text}:"
        yield f"  {o.explain()}."


def _budget_text(budget: BudgetRow) -> Iterator[str]:
    since = f" since {budget.since}" if budget.since and budget.level != "ok" else ""
    yield (
        f"{budget.name}: {budget.period_kind} {budget.period} ({budget.time_zone}), "
        f"{format_usd(budget.spent_micros)} spent, {LEVEL_TEXT.get(budget.level, budget.level)}"
        f"{since}"
    )
    for limit in budget.limits:
        over = budget.spent_micros - limit.limit_micros
        if over > 0:
            note = f"over by {format_usd(over)}"
        else:
            note = "limit reached" if over == 0 else f"{format_usd(-over)} left"
        yield (
            f"  {limit.name:<9} {format_usd(limit.limit_micros):>12} {bar(limit.share)} "
            f"{limit.share:>5.0%}  {note}"
        )
    remaining = budget.remaining_micros
    if remaining is not None:
        yield f"  remaining before the hard limit: {format_usd(remaining)}"
    yield f"  {budget.scope}"
    yield ""


def render_markdown(report: CostReport) -> str:
    source = f"live, read {report.read_at}" if report.live else "from the stored daily rows"
    lines = [
        f"### AI spend on {report.date} (UTC)",
        "",
        f"_{source}_",
        "",
        "| request type | spend | requests | tokens | per request |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in report.types:
        lines.append(
            f"| `{row.request_type}` | {format_usd(row.cost_micros)} | {row.requests:,} | "
            f"{row.tokens:,} | {_per_request(row.cost_micros, row.requests)} |"
        )
    lines.append(f"| **total** | **{format_usd(report.total_micros)}** | | | |")
    lines += [
        "",
        "| budget | period | spent | limits | state |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for budget in report.budgets:
        limits = ", ".join(
            f"{lim.name} {format_usd(lim.limit_micros)} ({lim.share:.0%})" for lim in budget.limits
        )
        lines.append(
            f"| `{budget.name}` | {budget.period_kind} {budget.period} {budget.time_zone} | "
            f"{format_usd(budget.spent_micros)} | {limits} | "
            f"{LEVEL_TEXT.get(budget.level, budget.level)} |"
        )
    if report.held:
        lines += ["", "Flags held by the cost guard:", ""]
        for held in report.held:
            what = "off" if held.state == "emergency" else f"rollout x {held.factor:g}"
            lines.append(f"- `{held.flag}`: {what} (`{held.budget}`) until {held.until}")
    if report.alerts:
        lines += ["", "Alerts this period:", ""]
        for alert in report.alerts:
            out = "sent to SNS" if alert.get("published") else "not sent to SNS"
            lines.append(f"- {alert.get('at')}: {alert.get('message')} ({out})")
    if report.overshoot is not None:
        o = report.overshoot
        lines += ["", f"Overshoot bound: **{o.bound_text}** ({o.explain()})."]
    return "\n".join(lines) + "\n"
