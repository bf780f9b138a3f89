"""Progress displays: a version being prepared (WatchDatasetVersion updates) and push/pull transfers.

On a terminal a rich progress bar; otherwise (CI logs, pipes) a plain line per phase change and at
most every few seconds. Both go to stderr, so stdout carries only results and ``-o json`` stays
parseable; "a terminal" therefore means stderr is one.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tunelab.cli.output import human_bytes, human_duration, short_version, state_name
from tunelab.common.errors import TunelabError

if TYPE_CHECKING:
    from rich.console import Console

    from tunelab.datasets.v1 import datasets_pb2 as pb

LINE_INTERVAL_S = 5.0


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _plain(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- a version being prepared ------------------------------------------------------------------
def describe(v: pb.DatasetVersion) -> dict[str, Any]:
    """The progress of ``v`` as display fields."""
    p = v.progress
    state = state_name(v)
    files = f"{p.files_done}/{p.files_total} files" if p.files_total else ""
    if p.files_failed:
        files += f" ({p.files_failed} failed)"
    size = f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)}" if p.bytes_total else ""
    active = state not in ("READY", "FAILED")
    return {
        "phase": (p.phase or state.lower()) if active else state.lower(),
        "files": files,
        "size": size,
        "rate": f"{human_bytes(p.bytes_per_second)}/s" if p.bytes_per_second and active else "",
        "eta": f"ETA {human_duration(p.eta_seconds)}" if p.eta_seconds and active else "",
        "current": (p.current_file[-48:] if active else ""),
    }


def follow_version(
    updates: Iterable[pb.DatasetVersion], ref: str, console: Console | None = None
) -> pb.DatasetVersion:
    """Displays ``updates`` until the version is READY (returned) or FAILED (raised)."""
    console = console or stderr_console()
    last = None
    show = _VersionBar(console) if console.is_terminal else _VersionLines()
    with show:
        for last in updates:
            show.update(last)
    if last is None or state_name(last) not in ("READY", "FAILED"):
        raise TunelabError(
            f"the watch of {ref} ended early; follow it again with `tunelab dataset watch {ref}`"
        )
    if state_name(last) == "FAILED":
        raise TunelabError(f"{short_version(last.name)} FAILED: {last.error or 'no reason given'}")
    return last


class _VersionBar:
    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            TextColumn("{task.fields[phase]:<10}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[files]}", markup=False),
            TextColumn("{task.fields[size]}", markup=False),
            TextColumn("{task.fields[rate]}", markup=False),
            TextColumn("{task.fields[eta]}", markup=False),
            TextColumn("{task.fields[current]}", markup=False),
            console=console,
        )
        self.task: Any = None

    def __enter__(self) -> _VersionBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, v: pb.DatasetVersion) -> None:
        fields = describe(v)
        total = v.progress.bytes_total or None
        done = v.progress.bytes_done
        if state_name(v) == "READY":
            total = done = total or 1
        if self.task is None:
            self.task = self.progress.add_task(short_version(v.name), total=total, **fields)
        self.progress.update(self.task, total=total, completed=done, **fields)


class _VersionLines:
    def __init__(self) -> None:
        self.key: tuple[str, str] | None = None
        self.when = 0.0

    def __enter__(self) -> _VersionLines:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, v: pb.DatasetVersion) -> None:
        fields = describe(v)
        key = (state_name(v), fields["phase"])
        now = time.monotonic()
        if key == self.key and now - self.when < LINE_INTERVAL_S:
            return
        self.key, self.when = key, now
        details = ", ".join(x for x in (fields["files"], fields["size"], fields["rate"], fields["eta"]) if x)
        line = f"{short_version(v.name)} {fields['phase']}" + (f": {details}" if details else "")
        if fields["current"]:
            line += f" ({fields['current']})"
        _plain(line)


# -- push and pull -----------------------------------------------------------------------------
@contextmanager
def transfer(label: str, console: Console | None = None) -> Iterator[Callable[[int, int], None]]:
    """Yields a ``progress(done_bytes, total_bytes)`` callback (safe to call from many threads)."""
    console = console or stderr_console()
    if console.is_terminal:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(TextColumn("{task.description}", markup=False), *columns, console=console) as bar:
            task = bar.add_task(label, total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done if total else 1, total=total or 1)

            yield update
        return

    lock = threading.Lock()
    printed_at = 0.0
    pending = ""

    def line(done: int, total: int) -> None:
        nonlocal printed_at, pending
        with lock:
            pending = f"{label}: {human_bytes(done)}/{human_bytes(total)}"
            if time.monotonic() - printed_at >= LINE_INTERVAL_S:
                printed_at = time.monotonic()
                _plain(pending)
                pending = ""

    yield line
    if pending:
        _plain(pending)
