"""`make demo`: the seed walkthrough on the embedded stack, run through the real `tunelab` CLI.

Every step prints the command a user would type, then runs it. The stack is left running for
exploration; `tunelab down` stops it. Run it again: it reuses what is there (the second prewarm of
unchanged data uploads nothing, the second pull is served from the local cache).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".demo"
TUNELAB = [str(Path(sys.executable).parent / "tunelab")]
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def step(title: str) -> None:
    print(f"\n{BOLD}== {title}{RESET}", flush=True)


def tunelab(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    print(f"{BOLD}$ tunelab {shlex.join(args)}{RESET}", flush=True)
    started = time.monotonic()
    result = subprocess.run([*TUNELAB, *args], text=True, capture_output=capture)
    if capture:
        print(result.stdout, end="")
        print(result.stderr, end="", file=sys.stderr)
    print(f"{DIM}  ({time.monotonic() - started:.2f} s){RESET}", flush=True)
    if check and result.returncode != 0:
        sys.exit(f"demo: `tunelab {shlex.join(args)}` failed with exit code {result.returncode}")
    return result


def exists(dataset: str) -> bool:
    result = subprocess.run([*TUNELAB, "dataset", "get", dataset], capture_output=True, text=True)
    return result.returncode == 0


def main() -> None:
    from tunelab.recipes.advertisegen_sample import write_sample

    WORK.mkdir(exist_ok=True)

    step("1. Start the embedded stack (every service as a local process, a local object store)")
    tunelab("up")

    step("2. Register the AdvertiseGen dataset and prewarm it into the object store")
    sample = WORK / "AdvertiseGen"
    write_sample(sample, n_train=400, n_dev=40, seed=0)
    print(
        f"{DIM}  generated an AdvertiseGen-format sample in {sample.relative_to(REPO)} (the real set is "
        f"{'https://cloud.tsinghua.edu.cn/f/b3f119a008264b1cabd1/?dl=1'}){RESET}"
    )
    if exists("advertisegen"):
        tunelab("dataset", "push", "advertisegen", str(sample))
    else:
        tunelab(
            "dataset",
            "create",
            "advertisegen",
            "--source",
            str(sample),
            "--description",
            "AdvertiseGen sample (stand-in for the Tsinghua Cloud archive)",
        )
    tunelab("dataset", "versions", "advertisegen")

    step("3. Convert it to ChatGLM3's conversations format (a derived dataset)")
    tunelab("dataset", "transform", "advertisegen", "--to", "advertisegen-fix")
    tunelab("dataset", "files", "advertisegen-fix")

    step("4. Pull it where a job would read it (the second pull comes from the local blob cache)")
    target = WORK / "data" / "AdvertiseGen_fix"
    shutil.rmtree(target, ignore_errors=True)
    tunelab("dataset", "pull", "advertisegen-fix", str(target))
    again = WORK / "data" / "AdvertiseGen_fix_again"
    shutil.rmtree(again, ignore_errors=True)
    tunelab("dataset", "pull", "advertisegen-fix", str(again))
    first = (target / "train.json").read_text(encoding="utf-8").splitlines()[0]
    print(f"  {target.relative_to(REPO)}/train.json, first line:\n  {first}")

    step("Done")
    tunelab("status")
    data_dir = os.environ.get("TUNELAB_DATA_DIR", "~/.tunelab")
    print(
        f"\nThe stack keeps running (data in {data_dir}). Explore it:\n"
        "  .venv/bin/tunelab dataset ls\n"
        "  .venv/bin/tunelab dataset get advertisegen-fix -o yaml\n"
        "Stop it with:\n"
        "  .venv/bin/tunelab down"
    )


if __name__ == "__main__":
    main()
