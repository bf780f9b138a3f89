"""Replace a directory in one step: build the new content beside it, then swap it in, so a reader
never sees a half-written directory and a failure leaves the old one as it was."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tunelab.common.errors import FailedPrecondition


def check_replaceable(target: Path, made_by_us: Callable[[Path], bool]) -> None:
    """Refuses a target that is a file, or a non-empty directory tunelab did not make."""
    if target.exists() and not target.is_dir():
        raise FailedPrecondition(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not made_by_us(target):
        raise FailedPrecondition(
            f"{target} is not empty and was not made by tunelab: choose an empty or new directory"
        )


@contextmanager
def replacing(target: Path, made_by_us: Callable[[Path], bool]) -> Iterator[Path]:
    """Yields a staging directory next to ``target``; when the block ends without an error the
    staging directory replaces ``target``, otherwise it is removed."""
    check_replaceable(target, made_by_us)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; the result should look like mkdir's
    try:
        yield staging
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
