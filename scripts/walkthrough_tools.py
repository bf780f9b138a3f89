"""What the walkthrough's steps stand on: the `tunelab` command line run as a user runs it, the
inputs it registers (an AdvertiseGen-format archive, ChatGLM3's requirements; the model is
chatglm3_standin's) and a
small HTTP file server that plays the dataset's download site."""

from __future__ import annotations

import http.server
import json
import shlex
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

TUNELAB = str(Path(sys.executable).parent / "tunelab")
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")

# ChatGLM3's finetune_demo/requirements.txt (THUDM/ChatGLM3 at HEAD), as the seed builds it.
CHATGLM3_REQUIREMENTS = """\
jieba>=0.42.1
ruamel_yaml>=0.18.6
rouge_chinese>=1.0.3
jupyter>=1.0.0
datasets>=2.18.0
peft>=0.10.0
deepspeed==0.16.2
mpi4py>=3.1.5
"""


class WalkthroughError(Exception):
    """A step did not get the result it needs; the message says which command and why."""


class Cli:
    """Runs ``tunelab`` in a subprocess with ``env``: shown commands print their command line and
    write to this terminal (progress bars included); quiet ones return parsed ``-o json``."""

    def __init__(self, env: Mapping[str, str], echo: Callable[[str], None] = print) -> None:
        self.env = dict(env)
        self.echo = echo

    def run(self, *args: str, check: bool = True) -> int:
        """``tunelab ARGS`` as a user types it: the command, its own output, how long it took."""
        self.echo(f"{BOLD}$ tunelab {shlex.join(args)}{RESET}")
        started = time.monotonic()
        sys.stdout.flush()
        code = subprocess.run([TUNELAB, *args], env=self.env, check=False).returncode
        self.echo(f"{DIM}  ({time.monotonic() - started:.1f} s){RESET}")
        if check and code != 0:
            raise WalkthroughError(f"`tunelab {shlex.join(args)}` failed with exit code {code}")
        return code

    def data(self, *args: str) -> Any:
        """The result of ``tunelab ARGS -o json``, quietly."""
        proc = subprocess.run(
            [TUNELAB, *args, "-o", "json"], env=self.env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise WalkthroughError(f"`tunelab {shlex.join(args)} -o json` failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def stdout(self, *args: str) -> str:
        """What ``tunelab ARGS`` prints on stdout (e.g. a key's secret), quietly."""
        proc = subprocess.run([TUNELAB, *args], env=self.env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise WalkthroughError(f"`tunelab {shlex.join(args)}` failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def ok(self, *args: str) -> bool:
        """Whether ``tunelab ARGS`` succeeds (e.g. ``dataset get NAME``: whether it exists), quietly."""
        proc = subprocess.run([TUNELAB, *args], env=self.env, capture_output=True, check=False)
        return proc.returncode == 0


def say(text: str, echo: Callable[[str], None] = print) -> None:
    """An explanation between commands, dimmed on a terminal."""
    for line in text.strip("\n").splitlines():
        echo(f"{DIM}  {line}{RESET}" if line else "")


def short_version(name: str) -> str:
    """``datasets/output/versions/3`` → ``output@3``."""
    parts = name.split("/")
    return f"{parts[1]}@{parts[3]}" if len(parts) == 4 else name


# -- inputs ----------------------------------------------------------------------------------------
def build_archive(directory: Path, n_train: int, n_dev: int) -> Path:
    """``AdvertiseGen.tar.gz`` laid out as the real download (``AdvertiseGen/train.json``, ``dev.json``)."""
    from tunelab.recipes.advertisegen_sample import write_sample

    sample = write_sample(directory / "AdvertiseGen", n_train=n_train, n_dev=n_dev, seed=0)
    archive = directory / "AdvertiseGen.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train.json", "dev.json"):
            tar.add(sample / split, arcname=f"AdvertiseGen/{split}")
    return archive


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving ``directory``; yields its base URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def curl_command(url: str, body: dict[str, Any], key_var: str = "") -> str:
    """The request as the curl command a user would paste; ``key_var``: the shell variable holding
    the API key it sends."""
    auth = f' -H "authorization: Bearer ${key_var}"' if key_var else ""
    return f"curl -X POST {url}{auth} \\\n  -d {shlex.quote(json.dumps(body, ensure_ascii=False))}"
