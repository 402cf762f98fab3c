"""The one place where errors become messages and exit codes."""

from __future__ import annotations

import gc
import sys
import traceback
from collections.abc import Sequence

import click

from reconciler.errors import ExitCode, ReconcilerError

# A run builds millions of small acyclic objects (every YAML node of every manifest); with the
# default thresholds the cycle collector walks them over and over and finds nothing: a third of
# the time of a plan over 10,000 manifests. Collect far less often instead of not at all.
GC_THRESHOLDS = (200_000, 50, 100)


def run(command: click.Command, args: Sequence[str] | None = None) -> int:
    """Run a click command; map every outcome to one of ``ExitCode``."""
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        result = command.main(args=list(args) if args is not None else None, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return ExitCode.INTERRUPTED
    except click.exceptions.Exit as exc:  # --help, --version
        return ExitCode.CLEAN if exc.exit_code == 0 else ExitCode.USER_ERROR
    except click.ClickException as exc:  # usage errors are user errors, never "changes pending"
        exc.show()
        return ExitCode.USER_ERROR
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return ExitCode.INTERRUPTED
    except ReconcilerError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except Exception:  # the boundary: anything unexpected is an internal error, with its trace
        click.echo("internal error: this is a bug, please report it with the trace below", err=True)
        traceback.print_exc(file=sys.stderr)
        return ExitCode.INTERNAL_ERROR
    return int(result) if isinstance(result, int) else ExitCode.CLEAN
