"""`make demo`: the seed walkthrough end to end on the embedded stack, through the real `tunelab` CLI.

Register a model and AdvertiseGen, build the job's environment, fine-tune with LoRA as a queued
job, serve the adapter through the gateway and call it. Every step prints the commands a user
would type, then runs them. The stack is left running; `tunelab down` stops it. Running it again
reuses what the first run registered and built (the steps are in scripts/walkthrough.py).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from walkthrough import OUTPUT, Sizes, Walkthrough
from walkthrough_serve import serve
from walkthrough_tools import BOLD, RESET, Cli, WalkthroughError, short_version

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".demo"
# The sample AdvertiseGen is downloaded from a server on this machine; the datasets service
# refuses loopback addresses unless told (its SSRF guard).
ALLOW_LOCAL_DOWNLOADS = '["127.0.0.1/32"]'


def step(title: str) -> None:
    print(f"\n{BOLD}== {title}{RESET}", flush=True)


def run(w: Walkthrough) -> None:
    step("1. Start the embedded stack: every service as a local process, a local object store")
    w.start_stack()
    step("2. Register the base model")
    w.register_model()
    step("3. Register AdvertiseGen, prewarm it, convert it; the recipe's config; an output dataset")
    w.register_data()
    step("4. Build the job's Python environment")
    w.build_environment()
    step("5. Fine-tune: submit the LoRA job and follow it")
    trained = w.train()
    step("6. Serve the base model + adapter through the gateway and call it")
    serve(w, short_version(trained["output"]["name"]))


def main() -> None:
    started = time.monotonic()
    WORK.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TUNELAB_ALLOWED_NETWORKS", ALLOW_LOCAL_DOWNLOADS)
    w = Walkthrough(WORK, Cli(env), Sizes())
    try:
        run(w)
    except WalkthroughError as exc:
        sys.exit(f"\ndemo: {exc}\nThe services' logs: {env.get('TUNELAB_DATA_DIR', '~/.tunelab')}/logs/")
    step(f"Done in {time.monotonic() - started:.0f} s")
    data_dir = env.get("TUNELAB_DATA_DIR", "~/.tunelab")
    print(
        f"The stack keeps running (its data in {data_dir}, the demo's inputs in .demo/). Explore it:\n"
        "  .venv/bin/tunelab dataset ls\n"
        f"  .venv/bin/tunelab job logs finetune-chatglm3 --tail 20\n"
        f"  .venv/bin/tunelab dataset versions {OUTPUT}\n"
        "  .venv/bin/tunelab job metrics finetune-chatglm3\n"
        "  .venv/bin/tunelab model ls\n"
        "  .venv/bin/tunelab config show\n"
        "Stop it with:\n"
        "  .venv/bin/tunelab down"
    )


if __name__ == "__main__":
    main()
