"""``breakglass serve`` and ``breakglass dashboard``: the HTTP API and its dashboard on this
machine, and the deployed dashboard of an API that authorizes with IAM, signed for a browser.

Both need the server extra (pip install 'ai-flag-reconciler[server]'); its modules are
imported when a command runs, so the rest of ``breakglass`` works without it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
from botocore.exceptions import BotoCoreError

from reconciler.cli.options import root_option, store_option
from reconciler.commands.common import make_context
from reconciler.errors import ExitCode, UserError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--public-dashboard",
    is_flag=True,
    help="Let anyone who can reach the server read the dashboard's pages (its shutdown and "
    "restore forms still need the token).",
)
@click.option(
    "--repository-url",
    envvar="RECONCILER_REPOSITORY_URL",
    help="The repository's web address (https://github.com/OWNER/NAME): the dashboard links "
    "each flag's manifest there.",
)
@root_option
@store_option
def serve(
    host: str,
    port: int,
    public_dashboard: bool,
    repository_url: str | None,
    root: Path,
    backend: str | None,
) -> int:
    """Serve the HTTP API (GET /health, /health/detail, /feature-flags/status; POST
    /emergency-shutdown, /emergency-restore) with the bearer token in $RECONCILER_API_TOKEN,
    and the dashboard at /dashboard (sign in with the same token).

    One JSON access line per request goes to standard error, with user ids hashed and context
    values redacted. Needs the server extra: pip install 'ai-flag-reconciler[server]'.
    """
    token = os.environ.get("RECONCILER_API_TOKEN", "")
    if len(token) < 16:
        raise UserError(
            "set RECONCILER_API_TOKEN (at least 16 characters): every request but /health "
            "must carry it as a bearer token"
        )
    try:
        from reconciler.server.app import ApiSettings, BearerToken, create_app  # noqa: PLC0415
        from reconciler.server.local import listen  # noqa: PLC0415
        from reconciler.server.local import serve as serve_app  # noqa: PLC0415
    except ImportError as exc:
        raise UserError(
            f"the HTTP API needs the server extra ({exc.name} is missing): "
            "pip install 'ai-flag-reconciler[server]'"
        ) from None
    context = make_context(root, backend, "")
    context.open_store().close()  # says which store, and fails now if it cannot be opened
    app = create_app(
        ApiSettings(
            lambda: context.open_store(lambda *a, **k: None),
            BearerToken(lambda: token),
            public_dashboard=public_dashboard,
            repository=repository_url,
        )
    )
    try:
        sock = listen(host, port)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    address, bound = sock.getsockname()[:2]
    click.echo(
        f"Serving on http://{address!s}:{bound} (the dashboard: http://{address!s}:{bound}"
        "/dashboard)",
        err=True,
    )
    serve_app(app, sock)
    return ExitCode.CLEAN


@click.command()
@click.argument("url")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--region",
    help="The API's region (else the one in API Gateway's URL, else your profile's or "
    "$AWS_REGION: for a custom domain).",
)
@click.option("--profile", help="The AWS profile whose credentials sign (else the usual chain).")
@click.option("--open/--no-open", "open_browser", default=True, help="Open the page in a browser.")
def dashboard(
    url: str, port: int, region: str | None, profile: str | None, open_browser: bool
) -> int:
    """Open the deployed dashboard of an API that authorizes with IAM.

    URL is the stack's ApiUrl (reconcile-stack status). A server on 127.0.0.1 signs each of
    your browser's requests to the dashboard with your AWS credentials and forwards it; the
    shutdowns you make are recorded with your IAM identity. It signs nothing but the
    dashboard's pages, and no form from another site.
    """
    try:
        import boto3  # noqa: PLC0415

        from reconciler.server.local import listen  # noqa: PLC0415
        from reconciler.server.local import serve as serve_app  # noqa: PLC0415
        from reconciler.server.signing_proxy import (  # noqa: PLC0415
            SIGN_IN,
            SigningProxy,
            Upstream,
            opener,
        )
    except ImportError as exc:
        raise UserError(
            f"the dashboard needs the server extra ({exc.name} is missing): "
            "pip install 'ai-flag-reconciler[server]'"
        ) from None
    try:
        session = boto3.Session(profile_name=profile)
        credentials = session.get_credentials()
    except BotoCoreError as exc:  # a profile that is not there, a broken config
        raise UserError(f"cannot read your AWS credentials: {exc}") from None
    upstream = Upstream.parse(url, region, fallback=session.region_name)
    if credentials is None:
        raise UserError("no AWS credentials found to sign with: configure a profile or SSO")
    try:
        sock = listen("127.0.0.1", port)
    except OSError as exc:
        raise UserError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    key = SigningProxy.new_key()
    link = f"http://127.0.0.1:{sock.getsockname()[1]}{SIGN_IN}?key={key}"
    click.echo(f"The dashboard of {url}, signed with your AWS credentials: {link}", err=True)
    with tempfile.TemporaryDirectory(prefix="reconciler-dashboard-") as private:  # mode 0700
        if open_browser:
            import webbrowser  # noqa: PLC0415

            webbrowser.open(opener(Path(private), link).as_uri())
        serve_app(SigningProxy(upstream, credentials.get_frozen_credentials, key), sock)
    return ExitCode.CLEAN
