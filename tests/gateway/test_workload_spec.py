"""Workload upstreams without a trainer: the server command lines and the JobSpec built for a
replica (flags, mounts, env, LoRA rank rounding), the checks on the weights, the `model deploy`
flags that choose who starts the server, and the spec's round trip through the gateway."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
import typer
from typer.testing import CliRunner

from tunelab.cli.commands.deployspec import UpstreamFlags, build_upstream
from tunelab.cli.main import app
from tunelab.common.errors import FailedPrecondition
from tunelab.gateway.modelcheck import adapter_rank, check_is_model, check_model_dir
from tunelab.gateway.models import ModelFetcher
from tunelab.gateway.servercmd import (
    DEPLOYMENT_LABEL,
    OWNER_LABEL,
    REPLICA_LABEL,
    SPEC_LABEL,
    job_id,
    job_spec,
    max_lora_rank,
)
from tunelab.gateway.specs import Adapter, DeploymentSpec, ModelSource, UpstreamSpec
from tunelab.gateway.v1 import gateway_pb2 as gpb
from tunelab.gateway.workloads import Workloads
from tunelab.trainer.v1 import trainer_pb2 as tpb

W = gpb.WorkloadUpstream


def deployment(runtime: str = "vllm", **upstream: object) -> DeploymentSpec:
    return DeploymentSpec(
        id="chatglm3-ad",
        model_name="chatglm3-ad",
        base=ModelSource("datasets/chatglm3-6b", resolved_version="datasets/chatglm3-6b/versions/2"),
        upstream=UpstreamSpec("workload", runtime=runtime, **upstream),  # type: ignore[arg-type]
        adapters=(
            Adapter(
                "ad",
                ModelSource(
                    "datasets/output",
                    subpath="checkpoint-3000",
                    resolved_version="datasets/output/versions/3",
                ),
            ),
            Adapter("hub", ModelSource(path="/srv/adapters/hub")),
        ),
    )


def test_the_vllm_command_line_and_its_job() -> None:
    spec = deployment(
        gpu_count=2,
        environment="environments/vllm",
        queue="queues/gpu",
        cpu_millis=8000,
        memory_bytes=32 * 2**30,
        args=("--max-model-len", "8192"),
    )
    job = job_spec(spec, 1, "gw-1", rank=16)

    assert list(job.command) == [
        "vllm", "serve", "./base", "--host", "0.0.0.0", "--port", "$PORT",
        "--served-model-name", "chatglm3-ad", "--enable-lora", "--max-lora-rank", "16", "--max-loras", "2",
        "--lora-modules", "ad=./adapters/ad/checkpoint-3000", "hub=/srv/adapters/hub",
        "--tensor-parallel-size", "2", "--max-model-len", "8192",
    ]  # fmt: skip
    assert job.workload == tpb.WORKLOAD_SERVER and job.port == 0  # the executor picks the port
    assert dict(job.env_vars) == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    assert [(m.dataset, m.path, m.mode) for m in job.datasets] == [
        ("datasets/chatglm3-6b/versions/2", "base", tpb.DatasetMount.MODE_INPUT),
        ("datasets/output/versions/3", "adapters/ad", tpb.DatasetMount.MODE_INPUT),
    ]  # the path adapter is read where the job runs, not mounted
    assert (job.resources.gpu_count, job.resources.cpu_millis, job.resources.memory_bytes) == (
        2,
        8000,
        32 * 2**30,
    )
    assert (job.queue, job.environment, job.priority_class) == ("queues/gpu", "environments/vllm", "high")
    assert job.working_dir == ""  # the trainer's choice: the command names its mounts relative to it
    labels = dict(job.labels)
    assert labels.pop(SPEC_LABEL)
    assert labels == {OWNER_LABEL: "gw-1", DEPLOYMENT_LABEL: "chatglm3-ad", REPLICA_LABEL: "1"}


def test_vllm_defaults_model_ids_and_remote_code() -> None:
    spec = deployment(trust_remote_code=True, priority_class="medium").with_changes(
        base=ModelSource(path="THUDM/chatglm3-6b"), adapters=()
    )
    job = job_spec(spec, 0, "gw-1")
    cmd = list(job.command)
    assert cmd[:3] == ["vllm", "serve", "THUDM/chatglm3-6b"]  # a model id is passed through as is
    assert cmd[cmd.index("--max-lora-rank") + 1] == "64" and cmd[cmd.index("--max-loras") + 1] == "1"
    assert "--lora-modules" not in cmd and cmd[-1] == "--trust-remote-code"
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "1" and job.resources.gpu_count == 1
    assert not job.datasets and job.priority_class == "medium"


def test_the_engine_command_line() -> None:
    job = job_spec(deployment("engine", args=("--max-batch-size", "2")), 0, "gw-1")
    assert list(job.command) == [
        "python", "-m", "tunelab.engine", "--model", "./base", "--served-model-name", "chatglm3-ad",
        "--host", "0.0.0.0", "--port", "$PORT",
        "--lora-modules", "ad=./adapters/ad/checkpoint-3000", "hub=/srv/adapters/hub",
        "--adapter-root", "./adapters", "--adapter-root", "/srv/adapters/hub",
        "--max-batch-size", "2",
    ]  # fmt: skip
    assert job.resources.gpu_count == 0 and not job.env_vars


def test_the_servers_require_a_key_derived_from_the_stack_token() -> None:
    keyed = Workloads(None, None, "gw-1", key_secret="stack-token")  # type: ignore[arg-type]
    key = keyed.api_key("chatglm3-ad")
    assert len(key) == 64 and "stack-token" not in key
    # The same across gateways of one owner and restarts (a running replica is kept); not another's.
    assert Workloads(None, None, "gw-1", key_secret="stack-token").api_key("chatglm3-ad") == key  # type: ignore[arg-type]
    assert keyed.api_key("other") != key
    assert Workloads(None, None, "gw-2", key_secret="stack-token").api_key("chatglm3-ad") != key  # type: ignore[arg-type]
    assert Workloads(None, None, "gw-1").api_key("chatglm3-ad") == ""  # type: ignore[arg-type]

    vllm = job_spec(deployment(), 0, "gw-1", api_key=key)
    assert dict(vllm.env_vars) == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_API_KEY": key}
    engine = job_spec(deployment("engine"), 0, "gw-1", api_key=key)
    assert dict(engine.env_vars) == {"TUNELAB_ENGINE_API_KEY": key}
    assert key not in " ".join([*vllm.command, *engine.command])


def test_the_spec_digest_tells_a_changed_replica_from_an_unchanged_one() -> None:
    same = [job_spec(deployment(), 0, "gw-1").labels[SPEC_LABEL] for _ in range(2)]
    other = job_spec(deployment(gpu_count=4), 0, "gw-1").labels[SPEC_LABEL]
    assert same[0] == same[1] != other


def test_job_ids_fit_the_trainer_names() -> None:
    assert job_id("chatglm3-ad", 0) == "dep-chatglm3-ad-0"
    long = "a" * 30 + "-" + "b" * 32
    ids = {job_id(long, i) for i in range(12)}
    assert len(ids) == 12 and all(len(i) <= 63 and i.startswith("dep-a") for i in ids)
    assert job_id(long, 0) != job_id(long[:-1] + "c", 0)


@pytest.mark.parametrize(
    ("ranks", "want"),
    [([], 64), ([0], 64), ([4], 8), ([8], 8), ([9], 16), ([16, 100], 128), ([256], 256), ([300], 300)],
)
def test_max_lora_rank_rounds_up_to_a_value_vllm_takes(ranks: list[int], want: int) -> None:
    assert max_lora_rank(ranks) == want


def test_adapter_rank_and_model_checks(tmp_path: Path) -> None:
    cfg = {"r": 8, "rank_pattern": {"q_proj": 32}}
    assert adapter_rank({"adapter_config.json": json.dumps(cfg).encode()}, "ad", "x") == 32
    with pytest.raises(
        FailedPrecondition, match=r"adapter ad \(datasets/out/versions/1\) is not a LoRA adapter"
    ):
        adapter_rank({}, "ad", "datasets/out/versions/1")
    with pytest.raises(
        FailedPrecondition, match=r"datasets/x/versions/1 is not a model: it has no config\.json"
    ):
        check_is_model({}, "datasets/x/versions/1")
    with pytest.raises(FailedPrecondition, match=r"config\.json is not valid JSON"):
        check_is_model({"config.json": b"{"}, "x")
    with pytest.raises(FailedPrecondition, match="has no model_type"):
        check_is_model({"config.json": b'{"hidden_size": 8}'}, "x")
    check_is_model({"config.json": b'{"model_type": "llama"}'}, "x")
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(FailedPrecondition) as err:
        check_model_dir(tmp_path, "datasets/notes/versions/1", False, "upstream.embedded.trust_remote_code")
    assert "\n" not in err.value.message and "datasets/notes/versions/1" in err.value.message


def test_ranks_are_read_from_path_adapters_this_process_sees(tmp_path: Path) -> None:
    """A path adapter the gateway can read gives its rank; one it cannot (it lives where the job
    runs) leaves the default."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"r": 24}))
    fetcher = ModelFetcher("127.0.0.1:1", "", tmp_path / "models")  # no datasets service: paths only
    workloads = Workloads(None, fetcher, "gw-1")  # type: ignore[arg-type]  # the checks need no trainer
    spec = deployment().with_changes(
        base=ModelSource(path="THUDM/chatglm3-6b"),
        adapters=(Adapter("a", ModelSource(path=str(tmp_path / "a"))), Adapter("b", ModelSource(path="/x"))),
    )
    _, rank = workloads._checked(spec)
    assert rank == 32


def flags(**kw: object) -> gpb.Upstream:
    return build_upstream(UpstreamFlags(**kw))  # type: ignore[arg-type]


def test_deploy_flags_choose_who_starts_the_server() -> None:
    assert flags().WhichOneof("kind") == "embedded"
    assert flags(device="cpu", trust_remote_code=True).embedded.trust_remote_code
    up = flags(vllm=["http://vllm:8000"], vllm_api_key="k")
    assert list(up.vllm.base_urls) == ["http://vllm:8000"] and up.vllm.api_key == "k"
    assert flags(runtime="vllm", vllm=["http://vllm:8000"]).WhichOneof("kind") == "vllm"
    w = flags(runtime="vllm").workload
    assert (w.runtime, w.gpu_count, w.priority_class) == (W.RUNTIME_VLLM, 0, "")  # server defaults
    w = flags(
        runtime="VLLM",
        resources=["cpu=8,memory=32Gi", "nvidia.com/gpu=1"],
        gpus=2,
        env="vllm",
        image="ghcr.io/x/vllm-agent:1",
        queue="gpu",
        priority="low",
        runtime_args=["--max-model-len", "8192"],
        trust_remote_code=True,
    ).workload
    assert (w.cpu_millis, w.memory_bytes, w.gpu_count) == (8000, 32 * 2**30, 2)  # --gpus wins
    assert (w.environment, w.image, w.queue, w.priority_class) == (
        "vllm",
        "ghcr.io/x/vllm-agent:1",
        "gpu",
        "low",
    )
    assert list(w.args) == ["--max-model-len", "8192"] and w.trust_remote_code
    w = flags(runtime="engine", workload=True, cpu="500m", memory="2Gi").workload
    assert (w.runtime, w.cpu_millis, w.memory_bytes) == (W.RUNTIME_ENGINE, 500, 2 * 2**30)


@pytest.mark.parametrize(
    ("kw", "hint", "says"),
    [
        ({"runtime": "triton"}, "--runtime", "use engine or vllm"),
        ({"runtime": "engine", "vllm": ["http://v:8000"]}, "--runtime", "--vllm points at vLLM servers"),
        ({"vllm": ["http://v:8000"], "gpus": 1}, "--vllm", "--gpus apply to servers the trainer starts"),
        ({"vllm": ["http://v:8000"], "workload": True}, "--vllm", "--workload apply"),
        ({"vllm": ["http://v:8000"], "trust_remote_code": True}, "--trust-remote-code", "vLLM's own"),
        ({"queue": "gpu"}, "--queue", "add --workload"),
        ({"runtime": "vllm", "device": "cuda"}, "--device", "--gpus"),
        ({"runtime": "vllm", "resources": ["ephemeral-storage=1Gi"]}, "--resources", "cpu, memory and"),
        ({"runtime": "vllm", "cpu": "lots"}, "--cpu", "not a CPU quantity"),
    ],
)
def test_deploy_flags_that_do_not_fit(kw: dict[str, object], hint: str, says: str) -> None:
    with pytest.raises(typer.BadParameter) as err:
        flags(**kw)
    assert err.value.param_hint == f"'{hint}'" and says in str(err.value)


def test_a_workload_deployment_round_trips_through_the_gateway(make_gateway, monkeypatch) -> None:
    """The CLI's flags reach the gateway and come back from it; without a trainer the load fails
    with a message naming the setting (the spec is kept)."""
    gut = make_gateway(trainer_addr="127.0.0.1:1")
    monkeypatch.setenv("TUNELAB_GATEWAY_ADDR", gut.gateway.grpc.address)
    monkeypatch.setenv("TUNELAB_CONFIG", "/nonexistent/config.yaml")
    run = CliRunner().invoke
    args = ["model", "deploy", "tiny", "--base", "path:THUDM/chatglm3-6b", "--adapter", "ad=/srv/ad"]
    args += [
        "--runtime",
        "vllm",
        "--gpus",
        "2",
        "--env",
        "vllm",
        "--queue",
        "gpu",
        "--runtime-arg=--enforce-eager",
    ]
    r = run(app, [*args, "--no-wait"])
    assert r.exit_code == 0, r.output
    d = gut.wait("tiny")
    w = d.upstream.workload
    assert (w.runtime, w.gpu_count, w.environment, w.queue) == (
        W.RUNTIME_VLLM,
        2,
        "environments/vllm",
        "queues/gpu",
    )
    assert list(w.args) == ["--enforce-eager"]
    assert d.state == gpb.Deployment.STATE_FAILED and "TUNELAB_TRAINER_ADDR" in d.error, d.error
    shown = run(app, ["model", "ls"])
    assert "vllm (trainer jobs)" in shown.output
    with pytest.raises(grpc.RpcError) as err:
        gut.stub.CreateDeployment(
            gpb.CreateDeploymentRequest(
                deployment_id="x",
                deployment=gpb.Deployment(
                    base_model=gpb.ModelSource(path="m"), upstream=gpb.Upstream(workload=W())
                ),
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "RUNTIME_VLLM" in err.value.details()


def test_a_failed_replica_job_is_told_in_one_line(tmp_path: Path) -> None:
    from tunelab.gateway.jobs import TrainerJobs

    jobs = TrainerJobs("127.0.0.1:1", "", timeout_s=5)  # its log cannot be read: the job's own words do
    workloads = Workloads(jobs, ModelFetcher("127.0.0.1:1", "", tmp_path), "gw-1")
    job = tpb.Job(
        name="jobs/dep-x-0",
        state=tpb.Job.STATE_FAILED,
        reason="BackoffLimitExceeded",
        message="attempt 2 failed (ServerExited): exit status 3; last lines of stderr:\nValueError: x\n  y",
    )
    try:
        assert workloads._failure(job, 0) == (
            "replica 0 (job dep-x-0) failed: BackoffLimitExceeded: attempt 2 failed (ServerExited): exit "
            "status 3 (`tunelab job logs dep-x-0` shows its output)"
        )
    finally:
        jobs.close()
