"""The dashboard's pages as HTML, from the same documents the API answers with (pure).

Every text that comes from the store (a reason, an operator, a rollout's detail) is escaped,
so markup or control characters in it display as text; nothing on a page names a user or a
context value. The page changes nothing git owns: where a user would look for an edit button,
it names the manifest's file instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from reconciler import breakglass as core

ROOT = "/dashboard"  # where the pages are; behind API Gateway, under the stage's path

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
.off{color:#a00;font-weight:600}.partial{color:#a60}.on{color:#070}
.alert{background:#fee;border:1px solid #c00;padding:.5rem 1rem;margin:1rem 0}
form.danger{border:1px solid #c00;padding:.7rem;margin:.5rem 0;max-width:40rem}
.bar{fill:#36c}.muted{color:#777}
"""


def text(value: Any) -> str:
    """Stored text as a page shows it: escaped, control and format characters made visible."""
    return escape(core.printable("" if value is None else value), quote=True)


def page(title: str, body: Iterable[str]) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{text(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{text(title)}</h1>" + "".join(body) + "</body></html>"
    )


def sign_in(error: str | None = None, root: str = ROOT) -> str:
    problem = f'<p class="alert">{text(error)}</p>' if error else ""
    return page(
        "Sign in",
        [
            problem,
            f'<form method="post" action="{text(root)}/sign-in">',
            '<label>API token <input type="password" name="token" autocomplete="off" required>'
            "</label> <button>Sign in</button></form>",
        ],
    )


def overview(
    flags: Sequence[Mapping[str, Any]],
    detail: Mapping[str, Any],
    csrf: str | None,
    *,
    notice: str | None = None,
    spend: str = "",
    root: str = ROOT,
    links: Mapping[str, str] | None = None,
) -> str:
    """Every flag's effective state, what is shut down and held, and the emergency forms."""
    body = [f'<p class="alert">{text(notice)}</p>' if notice else ""]
    body.append(f'<p><a href="{text(root)}/audit">Audit trail</a></p>')
    shutdowns = detail.get("shutdowns") or []
    if shutdowns:
        body.append('<div class="alert"><strong>Shut down now</strong><ul>')
        for entry in shutdowns:
            what = "ALL AI features" if entry["target"] == core.GLOBAL else entry["target"]
            until = f", until {text(entry['expires_at'])}" if entry.get("expires_at") else ""
            body.append(
                f"<li>{text(what)}: by {text(entry['by'])} since {text(entry['since'])}"
                f"{until} ({text(entry['reason'])})</li>"
            )
        body.append("</ul></div>")
    body.append("<h2>Flags</h2><table><tr><th>flag</th><th>state</th><th>serving</th>")
    body.append("<th>held by</th><th>rollout</th><th>configuration</th></tr>")
    for flag in flags:
        state = str(flag["state"])
        held = "; ".join(
            f"{text(h['owner'])}: {text(h.get('detail') or h.get('reason') or h['state'])}"
            for h in flag["held_by"]
        )
        rollout = flag.get("rollout_state")
        ramp = (
            f"{text(rollout['strategy'])} {text(rollout['state'])} at "
            f"{float(rollout['percentage']):g}%"
            if rollout
            else ""
        )
        body.append(
            f'<tr data-flag="{text(flag["flag"])}"><td>{text(flag["flag"])}</td>'
            f'<td class="{text(state)}">{text(state)}</td>'
            f'<td class="serving">{float(flag["serving_percentage"]):g}%</td>'
            f"<td>{held or '<span class=muted>git alone</span>'}</td><td>{ramp}</td>"
            f'<td class="muted">{_manifest(str(flag["flag"]), links)}</td></tr>'
        )
    body.append("</table>")
    body.append(spend)  # SVG drawn from the cost report's figures (charts.py)
    holds = detail.get("cost_guard") or []
    if holds:
        body.append("<h2>Held by the cost guard</h2><ul>")
        body += [
            f"<li>{text(h['flag'])}: {text(h['state'])} ({text(h['budget'])}) until "
            f"{text(h['until'])}</li>"
            for h in holds
        ]
        body.append("</ul>")
    if csrf is None:  # a public page, not signed in: no forms
        body.append(f'<p><a href="{text(root)}/sign-in">Sign in</a> to shut down or restore.</p>')
    else:
        body += _emergency_forms(flags, csrf, root)
    return page("AI feature flags", body)


def _manifest(flag: str, links: Mapping[str, str] | None) -> str:
    """Where the flag is configured: its file in git, linked where the repository is known."""
    path = f"flags.d/{text(flag)}.yaml"
    url = (links or {}).get(flag)
    shown = f'<a href="{text(url)}">{path}</a>' if url else path
    return f"edit in git: {shown}"


def _emergency_forms(flags: Sequence[Mapping[str, Any]], csrf: str, root: str) -> list[str]:
    options = "".join(
        f'<option value="{text(f["flag"])}">{text(f["flag"])}</option>' for f in flags
    )
    hidden = f'<input type="hidden" name="csrf" value="{text(csrf)}">'
    parts = ["<h2>Break-glass</h2>"]
    for action, label in (("shutdown", "Shut down"), ("restore", "Restore")):
        parts.append(
            f'<form class="danger" method="post" action="{text(root)}/{action}">{hidden}'
            f'<label>What <select name="target"><option value="">ALL AI features</option>'
            f"{options}</select></label><br>"
            '<label>Reason <input name="reason" size="50" required></label><br>'
            '<label>Your name <input name="by" required></label><br>'
            '<label><input type="checkbox" name="confirm" value="yes" required> '
            f"I mean it: {label.lower()} now</label><br>"
            f'<button name="action" value="{action}">{label}</button></form>'
        )
    return parts


def audit(
    entries: Sequence[Mapping[str, Any]],
    note: str | None,
    flag: str,
    owner: str,
    root: str = ROOT,
) -> str:
    """The audit trail, newest first, filtered by flag and by who acted or the owning team."""
    body = [
        f'<p><a href="{text(root)}">Back to the flags</a></p>',
        f'<form method="get" action="{text(root)}/audit">',
        f'<label>Flag <input name="flag" value="{text(flag)}"></label> ',
        f'<label>Who acted or owning team <input name="owner" value="{text(owner)}"></label> '
        "<button>Filter</button>",
        "</form>",
        f'<p class="alert">{text(note)}</p>' if note else "",
        "<table><tr><th>when</th><th>what</th><th>action</th><th>who</th><th>why</th></tr>",
    ]
    for entry in entries:
        body.append(
            f"<tr><td>{text(entry.get('at'))}</td><td>{_what(entry)}</td>"
            f"<td>{text(entry.get('action'))}</td><td>{text(entry.get('actor'))}</td>"
            f"<td>{text(entry.get('reason'))}</td></tr>"
        )
    body.append("</table>")
    return page("Audit trail", body)


def _what(entry: Mapping[str, Any]) -> str:
    """The entry's record; a break-glass entry's, with what it shut down or restored."""
    scope = entry.get("scope")
    if not isinstance(scope, list):
        return text(entry.get("record"))
    names = ["ALL AI features" if name == core.GLOBAL else str(name) for name in scope]
    return f"{text(entry.get('record'))}: {text(', '.join(names) or 'nothing')}"
