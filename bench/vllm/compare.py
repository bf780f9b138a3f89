"""Direct against through the gateway, side by side: the same streaming completion requests (a fixed
prompt set, fixed ``max_tokens``, ``ignore_eos`` so each request generates exactly that many tokens)
at each concurrency, in rounds that alternate which side goes first (ABBA) so drift in the engine
(warming, clocks, temperature) falls on both sides alike. A warm-up round on each side comes first.

Probes say where the time goes: each is read before and after every round (outside the timed part)
and returns cumulative Prometheus ``_sum``/``_count`` pairs, e.g. vLLM's own time to first token
(from its arrival at vLLM's API server) and the gateway's (from its arrival at the gateway). Each
side's level then carries the mean of every histogram over its rounds' requests: an added TTFT that
vLLM also measures was spent inside vLLM; one only the client sees was spent before it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from load import RoundResult, new_loop, run_round, run_shared_round, summarize


@dataclass
class Plan:
    concurrency: tuple[int, ...] = (1, 16, 64)
    rounds: int = 4  # ABBA order: with an even number each side goes first equally often
    max_tokens: int = 128
    per_worker: int = 2  # requests each worker sends per round, at least
    min_requests: int = 4  # requests per round, at least (matters at concurrency 1)
    warmup_concurrency: int = 8
    stagger_s: float = 0.0  # spread the workers' first requests over this many seconds (0: lockstep)
    shared_rounds: int = 0  # then rounds in which both sides share the engine (load.run_shared_round)

    def per_worker_at(self, concurrency: int) -> int:
        return max(self.per_worker, math.ceil(self.min_requests / concurrency))


def bodies(model: str, prompts: list[str], max_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "prompt": p,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for p in prompts
    ]


def run(
    sides: dict[str, tuple[str, str]],
    prompts: list[str],
    plan: Plan,
    after_round: Callable[[str, int], None] = lambda side, c: None,
    log: Callable[[str], None] = print,
    probe: Callable[[], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """``sides``: name → (base URL, model name). Returns per concurrency, per side, the summary of
    its rounds, and the gateway/direct comparison when the sides are named so."""
    out: dict[str, Any] = {}
    with asyncio.Runner(loop_factory=new_loop) as runner:
        for name, (url, model) in sides.items():
            warm = runner.run(
                run_round(url, bodies(model, prompts, plan.max_tokens), plan.warmup_concurrency, 1)
            )
            failed = [r.error for r in warm.requests if not r.ok]
            if failed:
                raise RuntimeError(f"warm-up on {name} ({url}) failed: {failed[0]}")
        for c in plan.concurrency:
            rounds: dict[str, list[RoundResult]] = {name: [] for name in sides}
            moved: dict[str, dict[str, float]] = {name: {} for name in sides}
            per_worker = plan.per_worker_at(c)
            for r in range(plan.rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for name in order:
                    url, model = sides[name]
                    before = probe() if probe else {}
                    result = runner.run(
                        run_round(url, bodies(model, prompts, plan.max_tokens), c, per_worker, plan.stagger_s)
                    )
                    if probe:
                        for key, value in probe().items():
                            moved[name][key] = moved[name].get(key, 0.0) + value - before.get(key, 0.0)
                    rounds[name].append(result)
                    after_round(name, c)
            level: dict[str, Any] = {name: summarize(rs) for name, rs in rounds.items()}
            if probe:
                for name in sides:
                    level[name]["server_mean_ms"] = histogram_means(moved[name])
            level["requests_per_worker"] = per_worker
            if {"direct", "gateway"} <= set(sides):
                level["comparison"] = compare(level["direct"], level["gateway"])
                if plan.shared_rounds:
                    level["shared"] = shared(runner, sides, prompts, plan, c)
            out[f"c{c}"] = level
            log(line(c, level))
    return out


def shared(
    runner: asyncio.Runner, sides: dict[str, tuple[str, str]], prompts: list[str], plan: Plan, c: int
) -> dict[str, Any]:
    """Rounds in which half the streams go direct and half through the gateway at once: both meet
    the same engine steps, so the engine's round-to-round swing (in separate rounds, several
    milliseconds of time to first token at 16 and 64 streams) falls on both alike and the
    difference left is the gateway's. Each worker alternates sides, so each side gets half."""
    per_worker = 2 * plan.per_worker_at(c)  # even: each worker sends as many each way
    targets = {name: (url, bodies(model, prompts, plan.max_tokens)) for name, (url, model) in sides.items()}
    rounds: dict[str, list[RoundResult]] = {name: [] for name in sides}
    for _ in range(plan.shared_rounds):
        for name, result in runner.run(run_shared_round(targets, c, per_worker)).items():
            rounds[name].append(result)
    out: dict[str, Any] = {name: summarize(rs) for name, rs in rounds.items()}
    d, g = out["direct"], out["gateway"]
    out["comparison"] = {
        "ttft_p50_added_ms": round(g["ttft_ms_p50"] - d["ttft_ms_p50"], 3),
        "ttft_mean_added_ms": round(g["ttft_ms_mean"] - d["ttft_ms_mean"], 3),
        "itl_p50_added_ms": round(g["itl_ms_p50"] - d["itl_ms_p50"], 3),
        "rounds_ttft_p50_added_ms": [
            round(gr - dr, 3)
            for dr, gr in zip(d["rounds_ttft_ms_p50"], g["rounds_ttft_ms_p50"], strict=False)
        ],
    }
    return out


def histogram_means(moved: dict[str, float]) -> dict[str, float]:
    """Mean in ms of each histogram whose ``_sum`` and ``_count`` moved (``name`` without suffix)."""
    out = {}
    for key, total in sorted(moved.items()):
        if key.endswith("_sum"):
            count = moved.get(key[: -len("_sum")] + "_count", 0.0)
            if count > 0:
                out[key[: -len("_sum")]] = round(total / count * 1000, 3)
    return out


def compare(direct: dict[str, Any], gateway: dict[str, Any]) -> dict[str, Any]:
    """The targets' figures, and two that say how much of a difference is the engine's doing:
    ``round_ratios`` (gateway / direct throughput of each pair of rounds, run back to back) and
    ``outside_engine_added_ms``: the mean time to first token the client saw, minus the mean vLLM
    measured itself (from its API server's receipt), gateway side minus direct side. That removes
    the engine's own round-to-round swing and leaves what lies outside it: the gateway's hop."""

    def diff(key: str) -> float | None:
        d, g = direct.get(key), gateway.get(key)
        return None if d is None or g is None else round(g - d, 3)

    d_tps, g_tps = direct["output_tokens_per_s"], gateway["output_tokens_per_s"]
    out: dict[str, Any] = {
        "throughput_ratio": round(g_tps / d_tps, 4) if d_tps and g_tps else None,
        "ttft_p50_added_ms": diff("ttft_ms_p50"),
        "ttft_p99_added_ms": diff("ttft_ms_p99"),
        "ttft_mean_added_ms": diff("ttft_ms_mean"),
        "itl_p50_added_ms": diff("itl_ms_p50"),
        "round_ratios": [
            round(g / d, 3) if d else None
            for d, g in zip(direct["rounds_tokens_per_s"], gateway["rounds_tokens_per_s"], strict=False)
        ],
    }
    engine = "vllm:time_to_first_token_seconds"
    d_eng = direct.get("server_mean_ms", {}).get(engine)
    g_eng = gateway.get("server_mean_ms", {}).get(engine)
    if None not in (d_eng, g_eng, direct.get("ttft_ms_mean"), gateway.get("ttft_ms_mean")):
        outside = (gateway["ttft_ms_mean"] - g_eng) - (direct["ttft_ms_mean"] - d_eng)
        out["outside_engine_added_ms"] = round(outside, 3)
    return out


def line(c: int, level: dict[str, Any]) -> str:
    parts = [f"c={c:<3d}"]
    for name in ("direct", "gateway"):
        s = level.get(name)
        if s:
            parts.append(
                f"{name}: {s['output_tokens_per_s']} tok/s, ttft p50 {s['ttft_ms_p50']} ms "
                f"p99 {s['ttft_ms_p99']} ms, errors {s['errors']}"
            )
    cmp_ = level.get("comparison")
    if cmp_:
        parts.append(f"ratio {cmp_['throughput_ratio']}, ttft p50 +{cmp_['ttft_p50_added_ms']} ms")
    if level.get("shared"):
        parts.append(f"shared rounds: ttft p50 +{level['shared']['comparison']['ttft_p50_added_ms']} ms")
    return " | ".join(parts)
