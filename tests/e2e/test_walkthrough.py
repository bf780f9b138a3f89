"""The seed walkthrough end to end on the embedded stack, with the code `make demo` runs
(scripts/walkthrough.py) at a smaller size: after each step, what it produced is checked here,
from the services' answers and from the object store itself."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2ehelpers import processes_under
from walkthrough import (
    CONFIGS,
    CONVERTED,
    DATA,
    DEPLOYMENT,
    ENVIRONMENT,
    MODEL,
    OUTPUT,
    RAW,
    Sizes,
    Walkthrough,
)
from walkthrough_serve import serve
from walkthrough_tools import TUNELAB, Cli, short_version

SIZES = Sizes(
    pretrain_steps=10,
    train_rows=48,
    dev_rows=4,
    max_steps=24,
    batch_size=4,
    logging_steps=4,
    eval_new_tokens=4,
    answer_tokens=6,
)
SERVICES = {"datasets", "environments", "trainer", "gateway"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verified_manifest(store: Path, version: dict[str, Any]) -> dict[str, str]:
    """The version's manifest as stored, each entry checked against its blob: path → sha256."""
    assert version["state"] == "STATE_READY", version
    name = version["name"]  # datasets/NAME/versions/N
    manifest = json.loads((store / name / "manifest.json").read_text())
    files = {}
    for entry in manifest["files"]:
        blob = store / "blobs" / "sha256" / entry["sha256"][:2] / entry["sha256"]
        assert blob.is_file(), f"{name}: {entry['path']} has no blob"
        assert (blob.stat().st_size, sha256(blob)) == (entry["size"], entry["sha256"]), entry
        files[entry["path"]] = entry["sha256"]
    assert len(files) == version["file_count"] and sum(e["size"] for e in manifest["files"]) == int(
        version["size_bytes"]
    )
    return files


def local_files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_the_seed_walkthrough_on_the_embedded_stack(stack_env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    store = Path(stack_env["TUNELAB_DATA_DIR"]) / "store"
    w = Walkthrough(work, Cli(stack_env), SIZES)

    # 1. the stack: four services, each SERVING
    rows = w.start_stack()
    assert {(r["service"], r["state"], r["health"]) for r in rows} == {
        (s, "running", "SERVING") for s in SERVICES
    }
    token = Path(stack_env["TUNELAB_DATA_DIR"]) / "token"  # the stack runs with a token only we can read
    assert stat.S_IMODE(token.stat().st_mode) == 0o600

    # 2. the model: THUDM's layout as built here, in the store byte for byte; then its import, a
    #    native GLM with a fast tokenizer, written by a job as a new version of its own dataset
    models = w.register_model()
    assert verified_manifest(store, models[RAW]) == local_files(work / RAW)
    assert set(local_files(work / RAW)) == {
        "config.json", "tokenizer_config.json", "tokenizer.model", "model.safetensors"
    }  # fmt: skip
    imported = verified_manifest(store, models[MODEL])
    assert {
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "tunelab-import.json",
    } <= set(imported)  # fmt: skip
    assert any(path.endswith(".safetensors") for path in imported) and "tokenizer.model" not in imported

    def stored_json(digest: str) -> Any:
        return json.loads((store / "blobs" / "sha256" / digest[:2] / digest).read_text())

    assert stored_json(imported["config.json"])["model_type"] == "glm"
    assert stored_json(imported["tunelab-import.json"])["source"] == short_version(models[RAW]["name"])

    # 3. AdvertiseGen downloaded over HTTP and unpacked; converted; the recipe's config uploaded
    versions = w.register_data()
    sample = work / "download" / "AdvertiseGen"
    assert verified_manifest(store, versions[DATA]) == {
        f"AdvertiseGen/{name}": digest for name, digest in local_files(sample).items()
    }
    converted = verified_manifest(store, versions[CONVERTED])
    assert set(converted) == {"train.json", "dev.json"}
    pulled = work / "data" / "AdvertiseGen_fix"
    pulled_files = local_files(pulled)
    assert pulled_files.pop(".tunelab-manifest.json")  # what the pull wrote, to find unchanged pulls
    assert pulled_files == converted
    rows_out = [json.loads(line) for line in (pulled / "train.json").read_text().splitlines()]
    rows_in = [json.loads(line) for line in (sample / "train.json").read_text().splitlines()]
    assert len(rows_out) == SIZES.train_rows
    assert rows_out[0]["conversations"] == [
        {"role": "user", "content": rows_in[0]["content"]},
        {"role": "assistant", "content": rows_in[0]["summary"]},
    ]
    assert set(verified_manifest(store, versions[CONFIGS])) == {"lora.yaml"}

    # 4. the environment: built, without what the image provides
    env = w.build_environment()
    assert env["state"] == "STATE_READY", env.get("error")
    locked = {line.split("==")[0] for line in env["lock"].splitlines() if "==" in line}
    assert {"jieba", "rouge-chinese"} <= locked
    assert not locked & {"torch", "transformers", "peft", "deepspeed", "mpi4py", "jupyter"}, locked
    again = w.build_environment()  # the same spec again: the same build, nothing rebuilt
    assert (again["env_key"], again["create_time"]) == (env["env_key"], env["create_time"])

    # 5. the job: SUCCEEDED in the environment, the loss went down, the adapter is in the output
    trained = w.train()
    job = trained["job"]
    logs = subprocess.run(
        [TUNELAB, "job", "logs", job["name"].split("/", 1)[1]], env=stack_env, capture_output=True, text=True
    ).stdout
    assert job["state"] == "STATE_SUCCEEDED", logs[-3000:]
    assert f"environment environments/{ENVIRONMENT}" in logs and "system site packages: the image's" in logs
    losses = [(p["step"], p["loss"]) for p in trained["metrics"] if "loss" in p]
    every = SIZES.logging_steps
    assert [s for s, _ in losses] == list(range(every, SIZES.max_steps + 1, every))
    assert losses[-1][1] < losses[0][1], losses
    assert any("rouge-1" in p.get("eval_scores", {}) for p in trained["metrics"])
    output_files = verified_manifest(store, trained["output"])
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(output_files)
    assert f"checkpoint-{SIZES.max_steps}/adapter_model.safetensors" in output_files
    assert {f["path"] for f in trained["files"]} == set(output_files)
    adapter = short_version(trained["output"]["name"])
    assert adapter.startswith(f"{OUTPUT}@")

    # 6. served: Triton's generate answer, OpenAI's, and the gateway's metric series
    served = serve(w, adapter)
    deployment = served["deployment"]
    assert deployment["state"] == "STATE_READY" and deployment["served_model_names"] == [DEPLOYMENT, "ad"]
    assert deployment["adapters"][0]["source"]["resolved_version"] == trained["output"]["name"]
    generated = served["generate"]
    assert set(generated) == {"model_name", "model_version", "text_output"}, generated
    assert generated["model_name"] == DEPLOYMENT and generated["text_output"].startswith("<|user|>")
    chat = served["chat"]
    assert chat["object"] == "chat.completion" and chat["model"] == DEPLOYMENT
    assert 0 < chat["usage"]["completion_tokens"] <= SIZES.answer_tokens
    for route in ("triton_generate", "openai_chat"):
        series = f'tunelab_gateway_requests_total{{code="200",model="{DEPLOYMENT}",route="{route}"}} 1.0'
        assert series in served["metrics"], served["metrics"]
    assert any(line.startswith("tunelab_gateway_generation_tokens_total") for line in served["metrics"])
    # ... with the API key serve() created; without one the gateway refuses (the stack has auth on)
    anonymous = httpx.post(
        f"{served['gateway_url']}/v2/models/{DEPLOYMENT}/generate", json={"text_input": "x"}
    )
    assert anonymous.status_code == 401, anonymous.text

    # 7. `tunelab down` stops everything it started: services, the engine, no job left behind
    assert w.cli.run("down") == 0
    assert processes_under(Path(stack_env["TUNELAB_DATA_DIR"])) == []
