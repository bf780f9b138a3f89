"""The seed walkthrough (fine-tune ChatGLM3 with LoRA on AdvertiseGen, then serve it) as steps on
the embedded stack, every one through the real `tunelab` command line.

`scripts/demo.py` (`make demo`) runs it with the sizes below and leaves the stack running;
`tests/e2e/test_walkthrough.py` runs the same steps smaller and checks what each produced. Every
step is safe to run again: what an earlier run registered is reused, not duplicated.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatglm3_standin import build_chatglm3_standin

from walkthrough_tools import (
    CHATGLM3_REQUIREMENTS,
    Cli,
    WalkthroughError,
    build_archive,
    say,
    serve_directory,
    short_version,
)

# What the walkthrough registers: datasets, the environment, the job, the deployment.
# RAW is the model as downloaded (THUDM's layout and code); MODEL its import, which jobs and serving use.
RAW, MODEL = "chatglm3-6b-thudm", "chatglm3-6b"
DATA, CONVERTED, CONFIGS = "advertisegen", "advertisegen-fix", "lora-config"
OUTPUT, ENVIRONMENT, JOB, DEPLOYMENT = "output", "chatglm3", "finetune-chatglm3", "chatglm3-ad"
# What the image (the stack's own Python) provides, or only ChatGLM3's notebook and finetune_hf.py
# use: left out of the environment, as the seed leaves out deepspeed and mpi4py.
EXCLUDED = ("deepspeed", "mpi4py", "jupyter", "datasets", "peft")


@dataclass(frozen=True)
class Sizes:
    """How big the run is: `make demo`'s defaults; the e2e test passes smaller ones."""

    pretrain_steps: int = 150  # of the stand-in base model, before the LoRA job
    train_rows: int = 400
    dev_rows: int = 40
    max_steps: int = 150
    batch_size: int = 8
    logging_steps: int = 10
    eval_new_tokens: int = 32  # per dev row, for ROUGE/BLEU at the end
    answer_tokens: int = 64  # of the requests through the gateway


@dataclass
class Walkthrough:
    """The steps, in order. ``work`` holds the generated inputs; ``cli`` runs `tunelab`."""

    work: Path
    cli: Cli
    sizes: Sizes = field(default_factory=Sizes)
    echo: Callable[[str], None] = print

    def say(self, text: str) -> None:
        say(text, self.echo)

    def ready(self, dataset: str) -> bool:
        """Whether ``dataset`` has a READY version (from an earlier run); one left without any (a
        failed earlier attempt) is removed, so that it can be created again."""
        if self.cli.ok("dataset", "get", f"{dataset}@latest"):
            self.say(f"{dataset} is there from an earlier run:")
            self.cli.run("dataset", "versions", dataset)
            return True
        if self.cli.ok("dataset", "get", dataset):
            self.cli.run("dataset", "rm", dataset, "--yes")
        return False

    # -- 1 ---------------------------------------------------------------------------------------
    def start_stack(self) -> list[dict[str, Any]]:
        """`tunelab up`; returns `tunelab status` rows."""
        self.cli.run("up")
        self.cli.run("status")
        return list(self.cli.data("status"))

    # -- 2 ---------------------------------------------------------------------------------------
    def register_model(self) -> dict[str, dict[str, Any]]:
        """A tiny ChatGLM3 in THUDM's layout registered as downloaded, then imported; returns both
        READY versions by dataset name."""
        self.say(
            f"""
The seed fine-tunes ChatGLM3-6B: 12 GB of weights and THUDM's own model code from a model hub, and a
GPU. No hub is reached here and no GPU is needed: a tiny ChatGLM3 built right now stands in for it,
laid out exactly as the download is (THUDM's config.json keys, tensor names and shapes, a
sentencepiece tokenizer.model with ChatGLM3's ids: 2 layers, 64 wide, 0.2 M parameters against
6.2 B), briefly pretrained on generated ad copy so that, like a real base model, it already writes
the language; the LoRA job teaches it the task. Expect fluent-looking but often wrong ads. With the
real weights you would run instead:
  tunelab dataset create {RAW} --source hf:THUDM/chatglm3-6b
  tunelab model import {MODEL} --from {RAW}"""
        )
        if not self.ready(RAW):
            raw = build_chatglm3_standin(self.work / RAW, self.sizes.pretrain_steps, self.echo)
            description = "stand-in for THUDM/chatglm3-6b: ChatGLM3's layout, 0.2 M parameters, built here"
            self.cli.run("dataset", "create", RAW, "--source", str(raw), "--description", description)
        self.say(
            f"""
THUDM's model code was written for transformers 4.3x and does not load in today's transformers or
vLLM without it. `tunelab model import` converts the checkpoint once, shard by shard, as a job, into
transformers' own GLM architecture (the same maths, tested equal to THUDM's code on logits, tokens
and chat format) with a fast tokenizer and ChatGLM3's chat template: a new version of {MODEL} that
the recipe, the embedded engine and vLLM load natively."""
        )
        if not self.ready(MODEL):
            self.cli.run("model", "import", MODEL, "--from", RAW)
        self.cli.run("dataset", "files", MODEL)
        return {n: dict(self.cli.data("dataset", "get", f"{n}@latest")) for n in (RAW, MODEL)}

    # -- 3 ---------------------------------------------------------------------------------------
    def register_data(self) -> dict[str, dict[str, Any]]:
        """AdvertiseGen over HTTP (prewarmed), converted to conversations; the recipe's lora.yaml;
        an empty output dataset. Returns the READY versions by dataset name."""
        s = self.sizes
        self.say(
            f"""
The seed downloads AdvertiseGen from Tsinghua Cloud over HTTP and waits for the prewarm:
  tunelab dataset create {DATA} --source 'https://cloud.tsinghua.edu.cn/f/b3f119a008264b1cabd1/?dl=1'
Here a generated sample with the real data's shape ({s.train_rows} train + {s.dev_rows} dev lines of
{{"content": "类型#上衣*材质#牛仔布*…", "summary": "…"}}) is served as AdvertiseGen.tar.gz from a local
HTTP server: the datasets service downloads and unpacks it, hashes and stores every file, and marks
the version READY once its manifest is verified. The bar below is that prewarm."""
        )
        if not self.ready(DATA):
            archive = build_archive(self.work / "download", s.train_rows, s.dev_rows)
            with serve_directory(archive.parent) as site:
                try:
                    description = "AdvertiseGen-format sample (stand-in for the Tsinghua Cloud archive)"
                    source = f"{site}/{archive.name}"
                    self.cli.run("dataset", "create", DATA, "--source", source, "--description", description)
                except WalkthroughError as exc:
                    raise WalkthroughError(
                        f"{exc}. If the datasets service refused a download from 127.0.0.1, the stack "
                        "was started without TUNELAB_ALLOWED_NETWORKS='[\"127.0.0.1/32\"]' (its SSRF "
                        "guard): stop it with `tunelab down` and run the walkthrough again"
                    ) from None
        self.say("\nChatGLM3's convert_adgen as a built-in transform: a new dataset, in conversations.")
        if not self.ready(CONVERTED):
            self.cli.run("dataset", "transform", DATA, "--to", CONVERTED)
        self.cli.run("dataset", "files", CONVERTED)
        pulled = self.work / "data" / "AdvertiseGen_fix"
        self.cli.run("dataset", "pull", CONVERTED, str(pulled))
        first = (pulled / "train.json").read_text(encoding="utf-8").splitlines()[0]
        self.say(f"{pulled.name}/train.json, first line:\n{first[:300]}")

        self.say(
            """
The seed's code dataset is the ChatGLM3 repository (--source git+https://github.com/THUDM/ChatGLM3@main).
tunelab's recipe replaces its finetune_hf.py, so the job needs only configs/lora.yaml, which ships
with the recipe unchanged. And, as in the seed, an empty dataset the job writes its output to."""
        )
        if not self.ready(CONFIGS):
            self.cli.run("dataset", "create", CONFIGS, "--source", str(recipe_configs()))
        if not self.cli.ok("dataset", "get", OUTPUT):
            self.cli.run("dataset", "create", OUTPUT, "--source", "empty")
        self.cli.run("dataset", "ls")
        names = (MODEL, DATA, CONVERTED, CONFIGS)
        return {n: dict(self.cli.data("dataset", "get", f"{n}@latest")) for n in names}

    # -- 4 ---------------------------------------------------------------------------------------
    def build_environment(self) -> dict[str, Any]:
        """The job's environment from ChatGLM3's requirements; returns it (READY)."""
        self.say(
            """
The seed builds a Python environment from ChatGLM3's requirements.txt, leaving out deepspeed and
mpi4py. The job also needs torch, transformers and peft: in a container they come with the job's
image, and an environment built with --system-site-packages adds its packages on top of them. In
the embedded stack the image is the Python the stack runs on (.venv, where `make setup` installed a
CPU torch): environments are built on it, and the job agent layers .venv under the environment when
the job starts (its own packages first). So the spec also leaves out what the image provides (peft,
and torch and transformers under it) and what only the notebook and finetune_hf.py use (jupyter,
datasets): no multi-GB torch is downloaded. The same spec again is a cache hit: it is keyed by its
resolved lock."""
        )
        requirements = self.work / "requirements.txt"
        requirements.write_text(CHATGLM3_REQUIREMENTS)
        excludes = [arg for name in EXCLUDED for arg in ("--exclude", name)]
        self.cli.run(
            "env", "create", ENVIRONMENT, "--python", "3.11", "-r", str(requirements), *excludes,
            "--system-site-packages",
        )  # fmt: skip
        return dict(self.cli.data("env", "get", ENVIRONMENT))

    # -- 5 ---------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """The seed's `job submit`, followed to the end; returns the job, its metric points, the
        output version and its files."""
        s = self.sizes
        cap = self.cli.data("queue", "capacity")
        cpus, gpus = max(1, int(cap["cpu_millis"]) // 1000), int(cap["total_gpus"])
        memory = max(1, min(16, int(cap["memory_bytes"]) // 2**30 // 2))
        resources = f"cpu={min(8, cpus)},memory={memory}Gi" + (",nvidia.com/gpu=1" if gpus else "")
        self.say(
            f"""
The seed's `baizectl job submit`, flag for flag. It asks for cpu=8,memory=16Gi,nvidia.com/gpu=1;
this machine has {cpus} CPU(s) and {gpus} GPU(s), so the job asks for {resources}. lora.yaml's
3000 steps become {s.max_steps} with --set overrides (a CPU-sized batch and learning rate too).
--follow shows the live progress: step, loss, tokens/s, ETA."""
        )
        if self.cli.ok("job", "get", JOB):
            self.say(f"{JOB} ran before (an earlier run; its outputs stay in {OUTPUT}): removing the job")
            self.cli.run("job", "rm", JOB, "--force")
        overrides = {
            "training_args.max_steps": s.max_steps,
            "training_args.per_device_train_batch_size": s.batch_size,
            "training_args.learning_rate": "5e-3",
            "training_args.lr_scheduler_type": "constant",
            "training_args.logging_steps": s.logging_steps,
            "training_args.save_steps": max(1, s.max_steps // 2),
            "training_args.eval_steps": s.max_steps,
            "training_args.per_device_eval_batch_size": 8,
            "training_args.generation_config.max_new_tokens": s.eval_new_tokens,
            "data_config.test_file": "null",
        }
        sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
        if self.cli.ok("dataset", "get", f"{OUTPUT}@latest"):
            self.say(
                f"{OUTPUT} holds the checkpoints of an earlier run, and the recipe resumes from the last "
                "one, as finetune_hf.py does;\nits fourth argument `no` starts over instead."
            )
            sets = ["no", *sets]
        self.cli.run(
            "job", "submit", "--name", JOB, "-t", "PYTORCH", "--priority", "high", "--resources", resources,
            "--workers", "1", "--queue", "default",
            "--datasets", f"{CONVERTED}:data/AdvertiseGen_fix", "--datasets", f"{MODEL}:{MODEL}:ro",
            "--datasets", f"{CONFIGS}:configs", "--datasets", f"{OUTPUT}:output", "--env", ENVIRONMENT,
            "--labels", "job_type=pytorch", "--restart-policy", "on-failure", "--follow", "--",
            "python", "-m", "tunelab.recipes.lora", "data/AdvertiseGen_fix", f"./{MODEL}",
            "configs/lora.yaml", *sets,
        )  # fmt: skip
        self.cli.run("job", "metrics", JOB)
        job = self.cli.data("job", "get", JOB)
        mount = next(m for m in job["spec"]["datasets"] if m["path"] == "output")
        committed = mount["committed_version"]
        if not committed and mount.get("resolved_version"):
            committed = mount["resolved_version"]
            self.say(
                f"\nThe job reproduced {short_version(committed)} bit for bit (the same data, seed and CPU "
                "arithmetic as the earlier run):\nan unchanged output is not committed again."
            )
        if not committed:
            raise WalkthroughError(
                f"job {JOB} committed no new version of {OUTPUT}; see `tunelab job logs {JOB}`"
            )
        ref = committed.replace("datasets/", "", 1).replace("/versions/", "@")
        self.say(f"\nThe job's output, a version of the {OUTPUT} dataset: {ref}")
        self.cli.run("dataset", "files", ref)
        return {
            "job": job,
            "metrics": self.cli.data("job", "metrics", JOB),
            "output": self.cli.data("dataset", "get", ref),
            "files": self.cli.data("dataset", "files", ref),
        }


def recipe_configs() -> Path:
    """The directory of the recipe's configs/lora.yaml (without importing the recipe: no torch)."""
    spec = importlib.util.find_spec("tunelab.recipes.lora")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tunelab.recipes.lora is not installed: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "configs"
