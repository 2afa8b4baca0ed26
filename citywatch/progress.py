"""Progress bars for the CLI's long commands (replay, devices import, demo, simulate, dashboards push,
mosquitto-auth, backup, restore): on stderr, and only when stderr is a terminal.

In a pipe, a file, a CI log or a test, nothing is drawn and rich is not even imported: the output a
script reads stays exactly as it was. `CITYWATCH_PROGRESS=0` turns the bars off on a terminal too.
The bar is transient (it disappears when the work is done), so the command's one-line summary is
what stays on screen. Lines the command prints to stdout while a bar runs are printed above it
when stdout is the same terminal, and untouched otherwise (`replay --out - > file` stays clean).

    with progress.bar(_("replaying"), total=size, unit="bytes") as bar:
        ...; bar.update(done)
    for item in progress.track(items, _("publishing"), total=len(items)): ...
    with progress.bar(_("writing the backup")):   # no total: a spinner with the elapsed time
        ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TextIO, TypeVar

T = TypeVar("T")


class Bar(Protocol):
    def advance(self, amount: float = 1) -> None: ...

    def update(self, completed: float, total: float | None = None) -> None: ...


class _NoBar:
    """What a command gets when nothing is drawn: every call does nothing."""

    def advance(self, amount: float = 1) -> None:
        return None

    def update(self, completed: float, total: float | None = None) -> None:
        return None


class _RichBar:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, amount: float = 1) -> None:
        self._progress.advance(self._task, amount)

    def update(self, completed: float, total: float | None = None) -> None:
        if total is None:
            self._progress.update(self._task, completed=completed)
        else:
            self._progress.update(self._task, completed=completed, total=total)


def enabled(stream: TextIO | None = None) -> bool:
    """Whether bars are drawn: stderr (or `stream`) is a terminal, TERM is not `dumb`, and
    CITYWATCH_PROGRESS is not 0/off/no."""
    if os.environ.get("CITYWATCH_PROGRESS", "").strip().lower() in ("0", "off", "no", "false"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams (click's test runner)
        return False


def _stdout_is_terminal() -> bool:
    try:
        return bool(sys.stdout.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def bar(description: str, total: float | None = None, *, unit: str = "items", show: bool = True) -> Iterator[Bar]:
    """A bar for `total` steps (`unit="bytes"` shows sizes), or a spinner with the elapsed time when
    the total is unknown. Yields an object with `advance(n)` and `update(completed, total)`.
    `show=False` draws nothing (e.g. the command's own output goes to that terminal)."""
    if not show or not enabled():
        yield _NoBar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), DownloadColumn() if unit == "bytes" else MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn()]
    else:
        columns += [TimeElapsedColumn()]
    # stdout lines are redirected above the bar only when they go to the same terminal
    same_terminal = _stdout_is_terminal()
    with Progress(*columns, console=Console(stderr=True), transient=True, redirect_stdout=same_terminal,
                  redirect_stderr=False) as progress:
        task = progress.add_task(description, total=total)
        yield _RichBar(progress, task)


def track(items: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """`items`, advancing a bar as each is taken (total: len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(description, total) as b:
        for item in items:
            yield item
            b.advance()
