"""The embedded stack's token: ``DATA_DIR/token``, readable by its owner only (mode 600).

``tunelab up`` makes one the first time (32 random bytes), or records the one it was given, and
starts every service with it (``TUNELAB_AUTH_TOKEN``); the CLI reads it when no flag, variable or
config file names a token, so commands on the same machine and data dir need no flag. Another user
cannot read it, and so cannot call the services.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from tunelab.cli.runstate import StackError

TOKEN_FILE = "token"


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def read_token(data_dir: Path) -> str:
    """The stack's token; "" when there is none (or this user may not read it)."""
    try:
        return token_path(data_dir).read_text().strip()
    except OSError:
        return ""


def write_token(data_dir: Path, token: str) -> None:
    """Writes ``token`` with mode 600 (created so, never readable by others for a moment), replacing
    the file whole."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = token_path(data_dir)
    partial = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def stack_token(data_dir: Path, given: str | None) -> tuple[str, bool]:
    """The token the stack runs with, and whether it is new: ``given`` (recorded in the file),
    else the one recorded, else a new random one (recorded)."""
    if given is not None:
        if not given.strip():
            raise StackError("the token is empty: give one, or start the stack without auth with --open")
        new = read_token(data_dir) != given
        if new or token_path(data_dir).stat().st_mode & 0o077:
            write_token(data_dir, given)
        return given, new
    recorded = read_token(data_dir)
    if recorded:
        if token_path(data_dir).stat().st_mode & 0o077:  # made readable by others since: close it
            token_path(data_dir).chmod(0o600)
        return recorded, False
    token = secrets.token_urlsafe(32)
    write_token(data_dir, token)
    return token, True
