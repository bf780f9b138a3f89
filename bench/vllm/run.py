"""Real vLLM behind the gateway: a LoRA adapter from tunelab's recipe deployed through the gateway onto
vLLM's OpenAI server, the seed's requests through it, its metrics, and a benchmark of the gateway
against vLLM directly (generation throughput and time to first token at concurrency 1, 16 and 64).

    python3 bench/vllm/run.py --out DIR                  # on a Linux GPU box with vLLM installed
    .venv/bin/python bench/vllm/run.py --engine embedded  # the same flow on CPU (tunelab's engine)

Steps: (1) a base model: ``--base-model DIR``, or built here (``basemodel.py``: a ChatGLM3 in THUDM's
on-disk layout, a random ChatGLM3-shaped ~1B made on the GPU or, with ``--size tiny``, the
walkthrough's stand-in, imported with ``python -m tunelab.recipes.glm import`` into transformers'
glm); (2) the adapter: ``--adapter DIR``, or a short ``python -m tunelab.recipes.lora`` run on that
base (LoRA on q/k/v with one shared lora_A: ChatGLM3's query_key_value LoRA); (3) the upstream: vLLM
with ``--enable-lora`` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (or ``python -m tunelab.engine``);
(4) ``python -m tunelab.gateway`` and a deployment of base + adapter on that upstream, made through
the gateway's gRPC API, which loads the adapter; (5) checks, in ChatGLM3's chat format (checks.py):
the upstream lists the adapter, and through the gateway ``/v1/models``, the seed's Triton
``/generate`` and ``/generate_stream``, a streaming chat to the adapter, base and adapter answering
differently, no answer containing ChatGLM3's stop strings; (6) the
benchmark (``compare.py``: separate rounds for throughput, shared rounds for time to first token, and
vLLM's own TTFT read around each round; vLLM, gateway and client on disjoint CPUs with 8+); (7) the
gateway's ``/metrics`` (request and NVML GPU series) and the upstream's. Writes
bench/results/vllm.json (a rehearsal with the embedded engine writes into the work directory instead)
and copies it with the logs into ``--out``. Every process started here is killed at the end, on
failure too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO / "bench")] + [
    str(REPO / "services" / s) for s in ("common", "cli", "trainer")
]

import checks  # noqa: E402
import compare  # noqa: E402
import report  # noqa: E402
from procs import Processes, StartFailed  # noqa: E402
from stack import (  # noqa: E402
    CpuSets,
    Upstream,
    child_env,
    deploy,
    start_gateway,
    start_trainer,
    start_upstream,
    vllm_command_shim,
)

LORA_YAML = REPO / "services/trainer/tunelab/recipes/lora/configs/lora.yaml"
# Histograms read around each benchmark round: vLLM's time to first token (from its API server's
# receipt), queueing and prefill, and the gateway's time to first token.
PROBED = (
    "vllm:time_to_first_token_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "tunelab_gateway_time_to_first_token_seconds",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=["vllm", "embedded"], default="vllm")
    p.add_argument("--size", choices=["1b", "tiny"], default=None, help="default: 1b for vllm, else tiny")
    p.add_argument("--base-model", type=Path, help="use this model directory instead of building one")
    p.add_argument("--adapter", type=Path, help="use this adapter instead of running the recipe")
    p.add_argument("--work", type=Path, help="working directory (default: a new temporary one)")
    p.add_argument("--out", type=Path, help="copy the result and the logs here (at most 8 files)")
    p.add_argument("--result", type=Path, help="result file (default: bench/results/vllm.json for vllm)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the child processes")
    p.add_argument("--upstream-python", help="interpreter for the upstream only (default: --python)")
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe-steps", type=int, default=30)
    g.add_argument(
        "--recipe-lr",
        type=float,
        default=None,
        help="default 1e-3 for 1b; 2e-2 for tiny, whose pretrained stand-in needs a stronger adapter to "
        "change its greedy answer within the 30 steps",
    )
    g.add_argument("--recipe-batch", type=int, default=8)
    g.add_argument("--recipe-set", action="append", default=[], metavar="KEY=VALUE", help="more --set")
    g.add_argument("--fallback-adapter", type=Path, help="use this adapter should the recipe fail")
    g = p.add_argument_group("upstream")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    g.add_argument("--max-lora-rank", type=int, default=16)
    g.add_argument("--max-model-len", type=int, default=2048)
    g.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="no CUDA graphs: starts sooner, but each step costs CPU launch time and varies more",
    )
    g.add_argument("--max-num-seqs", type=int, default=128, help="vLLM's batch limit (fewer graphs)")
    g.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="separate CPUs for the upstream, the gateway and the load client (8+ CPUs)",
    )
    g.add_argument("--vllm-args", default="", help="more vLLM flags, one shell-quoted string")
    g.add_argument("--upstream-timeout", type=float, default=600)
    g.add_argument(
        "--upstream",
        choices=["direct", "workload"],
        default="direct",
        help="direct: this script starts vLLM and the deployment points at it (--vllm URL); workload: "
        "the deployment has the trainer run `vllm serve` as a server job (--runtime vllm), on a trainer "
        "started here with its local executor",
    )
    g = p.add_argument_group("checks and benchmark")
    g.add_argument("--check-max-tokens", type=int, default=1024, help="the seed's max_tokens")
    g.add_argument("--concurrency", default="1,16,64")
    g.add_argument("--rounds", type=int, default=10, help="even: each side goes first equally often")
    g.add_argument(
        "--shared-rounds",
        type=int,
        default=6,
        help="then rounds with half the streams each way at once (the TTFT target's measure; 0: none)",
    )
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--per-worker", type=int, default=2)
    g.add_argument("--min-requests", type=int, default=4)
    g.add_argument("--prompts", type=int, default=64)
    g.add_argument(
        "--stagger-s", type=float, default=0.0, help="spread each round's first requests (0: all at once)"
    )
    g.add_argument("--skip-bench", action="store_true")
    args = p.parse_args(argv)
    args.size = args.size or ("1b" if args.engine == "vllm" else "tiny")
    args.recipe_lr = args.recipe_lr or (1e-3 if args.size == "1b" else 2e-2)
    return args


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = (args.work or Path(tempfile.mkdtemp(prefix="vllm-bench-"))).resolve()
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs = Processes(self.work)
        self.t0 = time.monotonic()
        self.result: dict[str, Any] = {"phases_s": {}, "checks": [], "errors": []}

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        with (self.logs / "run.log").open("a") as f:
            f.write(line + "\n")

    def phase(self, name: str, seconds: float) -> None:
        self.result["phases_s"][name] = round(seconds, 1)
        self.log(f"{name}: {seconds:.1f}s")

    def execute(self) -> None:
        a, r = self.args, self.result
        r["environment"] = report.environment(a.engine)
        self.log(f"work dir {self.work}; {json.dumps(r['environment'].get('gpu'))}")
        base, adapter = self.model_and_adapter()
        name = f"bench-{a.size}"
        ad_name = f"{name}-ad"
        cpus = CpuSets.split(os.sched_getaffinity(0)) if a.pin else None
        r["cpu_sets"] = cpus.describe() if cpus else None
        if a.upstream == "workload":
            up, gw = self.workload_upstream(base, name, ad_name, adapter)
        else:
            up = start_upstream(
                self.procs,
                a,
                a.upstream_python or a.python,
                base,
                name,
                self.logs,
                cpus and cpus.upstream,
                adapter_root=adapter.resolve(),
            )
            self.phase("upstream_start", up.started_s)
            gw = start_gateway(self.procs, a.python, self.work, self.logs, cpus and cpus.gateway)
            self.phase("gateway_start", gw.started_s)
            r["deployment"] = dep = deploy(gw, "bench", name, base, ad_name, adapter, up.url)
            self.phase("deploy", dep["seconds"])
            if dep["state"] not in ("STATE_READY", "STATE_DEGRADED"):
                raise RuntimeError(f"the deployment is {dep['state']}: {dep['error']}")
        r["upstream_models"] = report.get_json(f"{up.url}/v1/models")
        r["vllm_server_version"] = report.get_json(f"{up.url}/version") if a.engine == "vllm" else None
        started = time.monotonic()
        r["checks"] = checks.run_all(gw.http_url, up.url, name, ad_name, a.check_max_tokens)
        self.phase("checks", time.monotonic() - started)
        for c in r["checks"]:
            self.log(f"check {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {report.brief(c)}")
        gpu_peaks: dict[str, float] = {}
        if not a.skip_bench:
            try:
                self.benchmark(up.url, gw.http_url, name, gpu_peaks, cpus and cpus.client)
            except RuntimeError as exc:  # recorded; the metrics below are still worth reading
                r["errors"].append(f"benchmark: {exc}")
                self.log(f"benchmark failed: {exc}")
        gw_text = report.get_text(f"{gw.http_url}/metrics")
        up_text = report.get_text(f"{up.url}/metrics")
        (self.logs / "gateway-metrics.txt").write_text(gw_text)
        (self.logs / "upstream-metrics.txt").write_text(up_text)
        r["gateway_metrics"] = {**checks.gateway_metrics(gw_text), "gpu_peaks_under_load": gpu_peaks}
        prefix = "vllm:" if a.engine == "vllm" else "tunelab_engine_"
        r["upstream_metrics"] = checks.upstream_metrics(up_text, prefix)

    def workload_upstream(self, base: Path, name: str, ad_name: str, adapter: Path) -> tuple[Upstream, Any]:
        """The trainer and the gateway started here; the deployment made with a workload upstream,
        so the trainer runs `vllm serve` (from PATH: the bundle's console script) as a server job;
        the replica's address is that job's endpoint."""
        a, r = self.args, self.result
        shim = vllm_command_shim(a.upstream_python or a.python, self.work / "bin")
        trainer = start_trainer(self.procs, a.python, self.work, self.logs, shim)
        gw = start_gateway(self.procs, a.python, self.work, self.logs, trainer_addr=trainer)
        self.phase("gateway_start", gw.started_s)
        flags: list[str] = []
        if a.engine == "vllm":
            flags = ["--dtype", "bfloat16", "--max-model-len", str(a.max_model_len), "--max-num-seqs"]
            flags += [str(a.max_num_seqs), "--gpu-memory-utilization", str(a.gpu_memory_utilization)]
            flags += ["--enforce-eager"] if a.enforce_eager else []
            flags += shlex.split(a.vllm_args)
        else:
            flags = ["--device", "cpu", "--max-batch-size", "16"]
        runtime = "vllm" if a.engine == "vllm" else "engine"
        r["deployment"] = dep = deploy(gw, "bench", name, base, ad_name, adapter, "", runtime, tuple(flags))
        self.phase("deploy", dep["seconds"])
        if dep["state"] not in ("STATE_READY", "STATE_DEGRADED"):
            raise RuntimeError(f"the deployment is {dep['state']}: {dep['error']}")
        return Upstream(a.engine, dep["replica_urls"][0], dep["seconds"]), gw

    def model_and_adapter(self) -> tuple[Path, Path]:
        """The given base model and adapter, or built here: the model by basemodel.py, the adapter
        by a short run of the LoRA recipe on it (each a process of its own, on the GPU if any)."""
        a, r = self.args, self.result
        base, adapter, data = a.base_model, a.adapter, self.work / "data"
        trainer = child_env("trainer")
        if base is None or adapter is None:
            base = base or self.work / "base"
            cmd = [a.python, str(HERE / "basemodel.py"), str(base), str(data), "--size", a.size]
            if a.base_model is not None:
                cmd.append("--data-only")
            log = self.logs / "basemodel.log"
            self.phase("base_model", self.procs.run("base model", cmd, trainer, log, 900))
            r["base_model"] = json.loads(log.read_text().splitlines()[-1])
        if adapter is None:
            adapter = self.work / "adapter"
            cmd = [a.python, "-m", "tunelab.recipes.lora", str(data), str(base), str(LORA_YAML)]
            for item in self.recipe_overrides(adapter):
                cmd += ["--set", item]
            log = self.logs / "recipe.log"
            try:
                self.phase("recipe", self.procs.run("recipe", cmd, trainer, log, 900))
            except StartFailed as exc:
                if a.fallback_adapter is None:
                    raise
                adapter = a.fallback_adapter
                r["errors"].append(f"the recipe failed; the run goes on with --fallback-adapter: {exc}")
                self.log(r["errors"][-1])
            r["recipe"] = report.recipe_run(log)
        r["adapter"] = report.adapter_info(adapter)
        return base, adapter

    def benchmark(
        self,
        direct_url: str,
        gateway_url: str,
        model: str,
        gpu_peaks: dict[str, float],
        cpus: frozenset[int] | None,
    ) -> None:
        started = time.monotonic()
        everywhere = os.sched_getaffinity(0)
        plan = self.plan()
        top = max(plan.concurrency)

        def after_round(side: str, c: int) -> None:
            if side == "gateway" and c == top:  # NVML values right after the heaviest load
                values = checks.gateway_metrics(report.get_text(f"{gateway_url}/metrics"))["gpu_values"]
                for k, v in values.items():
                    gpu_peaks[k] = max(v, gpu_peaks.get(k, v))

        def probe() -> dict[str, float]:
            text = report.get_text(f"{direct_url}/metrics") + report.get_text(f"{gateway_url}/metrics")
            return checks.histogram_totals(text, PROBED)

        if cpus:
            os.sched_setaffinity(0, cpus)
        try:
            self.result["benchmark"] = compare.run(
                {"direct": (direct_url, model), "gateway": (gateway_url, model)},
                report.prompts(self.args.prompts),
                plan,
                after_round,
                self.log,
                probe,
            )
        finally:
            os.sched_setaffinity(0, everywhere)
        self.phase("benchmark", time.monotonic() - started)

    def hidden_paths(self) -> dict[str, str]:
        """Paths of this machine that must not appear in the result, and what stands for them."""
        a = self.args
        hide = {str(self.work): "<work>", str(REPO) + "/": "", str(REPO): "."}
        given = (
            ("base-model", a.base_model),
            ("adapter", a.adapter),
            ("fallback-adapter", a.fallback_adapter),
        )
        for label, path in (*given, ("out", a.out)):
            if path is not None:
                hide[str(path.resolve())] = hide[str(path)] = f"<{label}>"
        for python in (a.python, a.upstream_python):
            if python:
                hide[str(Path(python).parent)] = "<bin>"
        for i, entry in enumerate(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
            if entry.startswith("/") and len(entry) > 4:
                hide.setdefault(entry, f"<pythonpath-{i}>")
        return hide

    def recipe_overrides(self, adapter: Path) -> list[str]:
        """lora.yaml shrunk to a short run (no evaluation, no checkpoints), then ``--recipe-set``."""
        from tunelab.recipes.lora.config import TunelabOptions

        a = self.args
        # Eager and padded: a few steps do not repay compiling every layer (the GPU default).
        speed = ["tunelab.profile=standard"] if "profile" in TunelabOptions.__dataclass_fields__ else []
        return [
            *speed,
            f"training_args.output_dir={adapter}",
            f"training_args.max_steps={a.recipe_steps}",
            f"training_args.learning_rate={a.recipe_lr}",
            "training_args.lr_scheduler_type=constant",
            f"training_args.per_device_train_batch_size={a.recipe_batch}",
            f"training_args.logging_steps={max(1, a.recipe_steps // 5)}",
            "training_args.save_strategy=no",
            "data_config.val_file=null",
            "data_config.test_file=null",
            "max_input_length=128",
            "max_output_length=256",
            *a.recipe_set,
        ]

    def plan(self) -> compare.Plan:
        a = self.args
        return compare.Plan(
            tuple(int(c) for c in a.concurrency.split(",")),
            a.rounds,
            a.max_tokens,
            a.per_worker,
            a.min_requests,
            stagger_s=a.stagger_s,
            shared_rounds=a.shared_rounds,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    code = 0
    try:
        run.execute()
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001  (recorded, then reported)
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
        run.result["errors"].append(f"{type(exc).__name__}: {exc}")
        run.log(traceback.format_exc())
    finally:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # nothing interrupts the clean-up
            signal.signal(signum, signal.SIG_IGN)
        run.log("stopping every process started here")
        run.procs.stop_all()
    run.result["phases_s"]["total"] = round(time.monotonic() - run.t0, 1)
    path, met = report.write(run.result, args, run.work, sys.argv[1:], run.hidden_paths())
    run.log(f"wrote {path}")
    for line in report.summary(path):
        run.log(line)
    if args.out:
        report.copy_out(args.out, path, run.logs)
    return code or (0 if met else 3)


if __name__ == "__main__":
    sys.exit(main())
