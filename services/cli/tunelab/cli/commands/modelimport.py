r"""``tunelab model import``: a model that needs its own code (ChatGLM3 as THUDM ships it) becomes a
dataset version holding a transformers-native model, converted by a job.

The conversion runs where jobs run (``python -m tunelab.recipes.glm import``, in the trainer's
queue, near the data and with the ML stack), not in the CLI: the source is a dataset version, the
result a new version of an output dataset, and the job's log is the conversion's progress.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from tunelab.cli import completion as complete


def _version_ref(version_name: str) -> str:
    parts = version_name.split("/")
    return f"{parts[1]}@{parts[3]}" if len(parts) == 4 else version_name


def import_model(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(metavar="NAME", help="The dataset to hold the imported model (created if absent)."),
    ],
    source: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="DATASET[@VERSION]",
            help="The checkpoint as downloaded (e.g. chatglm3-6b-thudm, from `tunelab dataset create "
            "chatglm3-6b-thudm --source hf:THUDM/chatglm3-6b`); default version: the latest READY one.",
            autocompletion=complete.datasets,
        ),
    ],
    resources: Annotated[
        str,
        typer.Option(
            help="Per the job: memory about twice the largest shard (4Gi is plenty for ChatGLM3-6B)."
        ),
    ] = "cpu=1,memory=4Gi",
    queue: Annotated[str, typer.Option(help="Queue for the conversion job; default: default.")] = "",
    priority: Annotated[str, typer.Option(help="high, medium, low or a number.")] = "",
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Submit and return; follow with `tunelab job logs -f`.")
    ] = False,
) -> None:
    r"""Import ChatGLM3 (THUDM's layout and code) as a native model: train and serve it without remote code.

    ChatGLM3-6B ships model code written for transformers 4.3x. The import converts it once, shard by
    shard, into transformers' own `glm` architecture (the same maths, proven equal to THUDM's code on
    logits, tokens and chat format) with a fast tokenizer and ChatGLM3's chat template, as a new
    version of NAME. The LoRA recipe, the embedded engine and vLLM then load it natively.

    Example (the seed's model):

        tunelab dataset create chatglm3-6b-thudm --source hf:THUDM/chatglm3-6b
        tunelab model import chatglm3-6b --from chatglm3-6b-thudm
        tunelab job submit ... --datasets chatglm3-6b:chatglm3-6b ... -- \
          python -m tunelab.recipes.lora data/AdvertiseGen_fix ./chatglm3-6b configs/lora.yaml

    An adapter trained on the import can be written back in ChatGLM3's own layout (`query_key_value`)
    with `python -m tunelab.recipes.glm export-adapter ADAPTER_DIR OUT_DIR`.
    """
    import grpc

    from tunelab.cli.commands.jobs import client as trainer_client
    from tunelab.cli.commands.jobspec import SubmitFlags, build_spec
    from tunelab.cli.jobview import job_state, short
    from tunelab.common.errors import TunelabError
    from tunelab.datasets.v1 import datasets_pb2 as dpb

    clients = ctx.obj
    datasets = clients.datasets()
    ref, _, version = source.partition("@")
    src = datasets.get_version(source if version else f"{ref}@latest")
    src_ref = _version_ref(src.name)
    if src.state != dpb.DatasetVersion.STATE_READY:
        raise TunelabError(f"{src_ref} is {dpb.DatasetVersion.State.Name(src.state)}: wait until it is READY")
    try:
        target = datasets.get(name)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        target = datasets.create(
            name,
            dpb.Source(empty=dpb.EmptySource()),
            description=f"{src_ref}, imported as a native glm model",
        )
        typer.echo(f"created dataset {name} for the imported model")
    if target.source.WhichOneof("kind") != "empty":
        raise TunelabError(
            f"dataset {name} already exists with a {target.source.WhichOneof('kind')} source; the import "
            "writes a new version of an output dataset: pick another NAME"
        )
    job_name = f"import-{name}"[:50] + f"-{int(time.time()) % 100000:05d}"
    flags = SubmitFlags(
        name=job_name,
        priority=priority,
        resources=[resources],
        queue=queue,
        datasets=[f"{src_ref}:source", f"{name}:model"],
        restart_policy="never",
        labels=["tunelab.dev/kind=model-import"],
        command=["python", "-m", "tunelab.recipes.glm", "import", "source", "model", "--source-ref", src_ref],
    )
    trainer = trainer_client(ctx)
    job = trainer.submit(build_spec(flags), job_name)
    typer.echo(f"submitted job {short(job.name)}: converting {src_ref} into a new version of {name}")
    if detach:
        typer.echo(f"follow it with `tunelab job logs -f {short(job.name)}`")
        return
    for line in trainer.logs(job.name, follow=True):
        typer.echo(f"  {line.text}")
    final = trainer.wait(job.name)
    if job_state(final) != "SUCCEEDED":
        raise TunelabError(
            f"import job {short(final.name)} {job_state(final)}: {final.message or final.reason}".rstrip()
        )
    committed = [m.committed_version for m in final.spec.datasets if m.committed_version]
    where = _version_ref(committed[0]) if committed else name
    typer.echo(
        f"imported {src_ref} as {where}: train it with MODEL_DIR mounted from {name}, serve it with "
        f"`tunelab model deploy NAME --base {name}`"
    )
