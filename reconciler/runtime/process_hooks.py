"""The recorders of a process at its edges: each flushed at interpreter exit (and at a
multiprocessing child's ``os._exit``), none forked in the middle of a flush, and each started
over in a forked child (gunicorn --preload, multiprocessing): a new writer, from nothing (what
it inherited is the parent's to flush), with fresh locks and its own thread."""

from __future__ import annotations

import atexit
import multiprocessing.util
import os
from typing import Protocol


class Recording(Protocol):
    def close(self) -> None: ...

    def hold_for_fork(self) -> None: ...

    def release_after_fork(self) -> None: ...

    def start_over(self) -> None: ...


_open: set[Recording] = set()  # held until closed, so that exit flushes every one


def opened(recorder: Recording) -> None:
    _open.add(recorder)
    flush_at_process_exit(recorder)


def closed(recorder: Recording) -> None:
    _open.discard(recorder)


def flush_at_process_exit(recorder: Recording) -> None:
    """A multiprocessing child ends with os._exit, past atexit: its finalizers still run."""
    multiprocessing.util.Finalize(recorder, recorder.close, exitpriority=100)


@atexit.register
def _flush_at_exit() -> None:
    for recorder in list(_open):
        recorder.close()


def _before_fork() -> None:
    """No fork in the middle of a flush: a child would inherit the store's driver state of a
    write in progress (SQLite's locks on the file), and its own writes would wait on a lock no
    one holds. The flush finishes first; the child starts with fresh locks."""
    for recorder in list(_open):
        recorder.hold_for_fork()


def _after_fork_in_parent() -> None:
    for recorder in list(_open):
        recorder.release_after_fork()


def _after_fork_in_child() -> None:
    for recorder in list(_open):
        recorder.start_over()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
