"""A burst of streaming requests, direct against through the gateway, on a paced fake upstream: the
shape of the real-vLLM benchmark (bench/vllm/compare.py's client: every worker sends at the same
instant, 128 tokens per answer) without a GPU, to see what the gateway adds to the time to first
token when 64 requests arrive at once.

    .venv/bin/python bench/gateway/burst.py                     # c = 1, 16, 64; 4 rounds (ABBA)
    .venv/bin/python bench/gateway/burst.py --concurrency 64 --rounds 8 --token-ms 30

The fake upstream answers every stream with its first event after ``--first-token-ms`` and one
event every ``--token-ms`` after that. Prints one line per concurrency and, with ``--json``, writes
the summaries there (it does not write bench/results/: the numbers depend on this machine's load).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "vllm")]

import common as bc  # noqa: E402
import compare  # noqa: E402
from run import start_fake_upstream, start_tunelab  # noqa: E402

PROMPTS = [f"prompt {i}" for i in range(64)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--rounds", type=int, default=4, help="even: each side goes first equally often")
    p.add_argument("--max-tokens", type=int, default=128, help="events per streamed answer")
    p.add_argument("--per-worker", type=int, default=2)
    p.add_argument("--first-token-ms", type=float, default=70.0)
    p.add_argument("--token-ms", type=float, default=30.0)
    p.add_argument("--shared-rounds", type=int, default=4, help="rounds with half the streams each way")
    p.add_argument("--json", type=Path, help="write the per-level summaries here")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    port = bc.free_port()
    pacing = ["--chunks", str(args.max_tokens), "--first-token-ms", str(args.first_token_ms)]
    upstream = start_fake_upstream(tmp, port, *pacing, "--token-ms", str(args.token_ms))
    gateway = None
    try:
        gateway = start_tunelab(tmp, port)
        sides = {
            "direct": (f"http://127.0.0.1:{port}", "fake"),
            "gateway": (f"http://127.0.0.1:{gateway.port}", "fake"),
        }
        plan = compare.Plan(
            concurrency=tuple(int(c) for c in args.concurrency.split(",")),
            rounds=args.rounds,
            max_tokens=args.max_tokens,
            per_worker=args.per_worker,
            shared_rounds=args.shared_rounds,
        )
        out = compare.run(sides, PROMPTS, plan)
    finally:
        if gateway is not None:
            gateway.stop()
        upstream.stop()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
