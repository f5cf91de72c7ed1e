"""Progress on a terminal: rich's progress display on stderr, only when stderr is a TTY
(never in a pipe, a file or the JSON on stdout). Work that takes more than a moment uses it:
`explain --log` (bytes read), `preflight` over many files (documents checked)."""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator


def _tty(stream) -> bool:
    return bool(getattr(stream, "isatty", None)) and stream.isatty() and "VIRTDOCTOR_NO_PROGRESS" not in os.environ


@contextlib.contextmanager
def tracker(err, description: str, total: float | None, *, bytes_: bool = False,
            at_least: float = 0) -> Iterator[Callable[[float], None]]:
    """advance(n) for `total` units of work; a no-op unless `err` is a terminal and the work
    is at least `at_least` units."""
    if not _tty(err) or (total is not None and total < at_least):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if bytes_ else [MofNCompleteColumn()]
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=Console(file=err, stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
