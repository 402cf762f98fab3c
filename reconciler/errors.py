"""One error root for the control plane; the CLI maps these to exit codes in one place."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Every exit code the commands use, decided only by ``reconciler.cli.boundary``."""

    CLEAN = 0
    USER_ERROR = 1
    CHANGES_PENDING = 2
    INTERNAL_ERROR = 3
    INTERRUPTED = 130


class ReconcilerError(Exception):
    """Root of every error the control plane raises on purpose."""

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR


class UserError(ReconcilerError):
    """Bad input or configuration: the user can fix it. Exit code 1."""

    exit_code = ExitCode.USER_ERROR


class ConfigError(UserError):
    """The repository configuration file (``reconciler.toml``) is invalid."""


class ValidationFailed(UserError):
    """The manifest tree has errors; they were already reported as diagnostics."""

    def __init__(self, error_count: int) -> None:
        super().__init__(f"{error_count} error(s) in the manifests; nothing was planned or applied")
        self.error_count = error_count
