"""``tunelab dataset …``: named, versioned datasets on the datasets service.

References: ``NAME`` is a dataset; ``NAME@VERSION`` one of its versions (``NAME`` alone or
``NAME@latest`` means the newest READY one). Names are read without regard to case: the service
stores ``AdvertiseGen`` as ``advertisegen`` and keeps the spelling as the display name. gRPC errors
are turned into messages by the root group in ``tunelab.cli.main``, not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tunelab.cli import completion as complete
from tunelab.cli.commands.sources import SOURCE_HELP, S3Options, parse_labels, parse_source
from tunelab.cli.output import Format, OutputOpt, fmt_of

if TYPE_CHECKING:
    from tunelab.cli.clients.datasets import DatasetClient
    from tunelab.datasets.v1 import datasets_pb2 as pb

app = typer.Typer(
    help="Named, versioned datasets: create them from a source, follow their preparation, pull and "
    "push their files, transform them.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

NameArg = Annotated[
    str,
    typer.Argument(
        metavar="NAME",
        help="Dataset name: letters, digits and '-' (stored lower-case; any case finds it).",
        autocompletion=complete.datasets,
    ),
]
RefArg = Annotated[
    str,
    typer.Argument(
        metavar="NAME[@VERSION]",
        help="A dataset, or one version: NAME@3 (default: latest READY).",
        autocompletion=complete.datasets,
    ),
]
NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="Return at once instead of showing progress until READY.")
]


# -- helpers -----------------------------------------------------------------------------------
def _client(ctx: typer.Context) -> DatasetClient:
    return ctx.obj.datasets()  # type: ignore[no-any-return]


def _summary(v: pb.DatasetVersion) -> str:
    from tunelab.cli.output import human_bytes, short_version, state_name

    return f"{short_version(v.name)} is {state_name(v)}: {v.file_count} files, {human_bytes(v.size_bytes)}"


def _result(fmt: Format, msg: Any, line: str) -> None:
    """A command's result: ``line`` for people, the message itself for ``-o json|yaml``."""
    from tunelab.cli.output import render

    if fmt is Format.table:
        typer.echo(line)
    else:
        render(msg, fmt)


def _drop_if_empty(client: DatasetClient, ident: str) -> None:
    """Deletes the dataset this command just created when its upload was refused before it got a
    version, so that the name stays free for the next try."""
    try:
        if not list(client.list_versions(ident)):
            client.delete(ident)
    except Exception:  # noqa: BLE001 - the upload's own error is the one to show
        pass


def _follow(client: DatasetClient, v: pb.DatasetVersion) -> pb.DatasetVersion:
    from tunelab.cli.output import short_version
    from tunelab.cli.progress import follow_version

    return follow_version(client.watch(v.name), short_version(v.name))


# -- commands ----------------------------------------------------------------------------------
@app.command()
def create(
    ctx: typer.Context,
    name: NameArg,
    source: Annotated[str, typer.Option("--source", "-s", help=SOURCE_HELP)],
    description: Annotated[str, typer.Option("--description", "-d", help="A line about the dataset.")] = "",
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE, repeatable.")] = None,
    no_wait: NoWaitOpt = False,
    s3_endpoint: Annotated[
        str,
        typer.Option(
            help="s3 sources: host:port or URL of the S3 server (default AWS).",
            envvar=["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
        ),
    ] = "",
    s3_access_key: Annotated[
        str, typer.Option(help="s3 sources: access key.", envvar="AWS_ACCESS_KEY_ID")
    ] = "",
    s3_secret_key: Annotated[
        str, typer.Option(help="s3 sources: secret key.", envvar="AWS_SECRET_ACCESS_KEY", show_default=False)
    ] = "",
    s3_region: Annotated[str, typer.Option(help="s3 sources: region.", envvar="AWS_REGION")] = "",
    s3_insecure: Annotated[
        bool, typer.Option("--s3-insecure", help="s3 sources: plain http to the endpoint.")
    ] = False,
    hf_token: Annotated[
        str, typer.Option(help="hf sources: hub token.", envvar="HF_TOKEN", show_default=False)
    ] = "",
    hf_endpoint: Annotated[str, typer.Option(help="hf sources: hub URL.", envvar="HF_ENDPOINT")] = "",
    output: OutputOpt = None,
) -> None:
    r"""Create a dataset from a source and show its first version's progress until READY.

    The service fetches the source, hashes every file, uploads only content the store lacks and
    marks the version READY after verifying it. A local directory is uploaded from here instead.
    NAME is stored lower-case and found in any case; the spelling is kept as its display name.

    Examples:

        tunelab dataset create AdvertiseGen --source https://example.com/AdvertiseGen.tar.gz
        tunelab dataset create chatglm3-code --source git+https://github.com/THUDM/ChatGLM3@main
        tunelab dataset create mydata --source ./data --label team=nlp
        tunelab dataset create output --source empty
    """
    from tunelab.cli.output import dataset_label
    from tunelab.cli.progress import transfer

    src, upload_dir = parse_source(
        source,
        S3Options(s3_endpoint, s3_access_key, s3_secret_key, s3_region, s3_insecure),
        hf_token,
        hf_endpoint,
    )
    labels = parse_labels(label or [])
    client = _client(ctx)
    created = client.create(name, src, description, labels)
    ident = created.name.removeprefix("datasets/")  # the id: `name` folded to lower case
    line = f"created dataset {dataset_label(created)}"
    if upload_dir is not None:
        try:
            with transfer(f"uploading {upload_dir}") as progress:
                line += f"; {_summary(client.push(ident, upload_dir, progress))}"
        except BaseException:
            _drop_if_empty(client, ident)
            raise
    elif src.WhichOneof("kind") != "empty":
        versions = list(client.list_versions(ident))
        if versions and no_wait:
            line += f"; follow it with `tunelab dataset watch {ident}@{versions[-1].name.rsplit('/', 1)[-1]}`"
        elif versions:
            line += f"; {_summary(_follow(client, versions[-1]))}"
    _result(fmt_of(ctx, output), client.get(ident), line)


@app.command("ls")
def list_datasets(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List datasets.

    Example:

        tunelab dataset ls -o json
    """
    from tunelab.cli.output import render

    render(list(_client(ctx).list()), fmt_of(ctx, output))


@app.command()
def get(ctx: typer.Context, ref: RefArg, output: OutputOpt = None) -> None:
    """Show a dataset, or one of its versions.

    Examples:

        tunelab dataset get advertisegen -o yaml
        tunelab dataset get advertisegen@2
    """
    from tunelab.cli.output import render

    client = _client(ctx)
    msg = client.get_version(ref) if "@" in ref or "/versions/" in ref else client.get(ref)
    render(msg, fmt_of(ctx, output))


@app.command()
def versions(ctx: typer.Context, name: NameArg, output: OutputOpt = None) -> None:
    """List a dataset's versions with their state, size and progress.

    Example:

        tunelab dataset versions advertisegen
    """
    from tunelab.cli.output import render

    render(list(_client(ctx).list_versions(name)), fmt_of(ctx, output))


@app.command()
def watch(ctx: typer.Context, ref: RefArg, output: OutputOpt = None) -> None:
    """Show a version's progress until it is READY (exit 0) or FAILED (exit 1).

    Example:

        tunelab dataset watch advertisegen@1
    """
    client = _client(ctx)
    v = _follow(client, client.get_version(ref))
    _result(fmt_of(ctx, output), v, _summary(v))


@app.command()
def sync(ctx: typer.Context, name: NameArg, no_wait: NoWaitOpt = False, output: OutputOpt = None) -> None:
    """Fetch a dataset's source again into a new version (unchanged files cost no upload).

    Example:

        tunelab dataset sync advertisegen
    """
    from tunelab.cli.output import short_version

    client = _client(ctx)
    v = client.sync(name)
    if no_wait:
        line = (
            f"started {short_version(v.name)}; follow it with `tunelab dataset watch {short_version(v.name)}`"
        )
    else:
        v = _follow(client, v)
        line = _summary(v)
    _result(fmt_of(ctx, output), v, line)


@app.command()
def pull(
    ctx: typer.Context,
    ref: RefArg,
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Where to put the files: new, empty, or an earlier pull.")
    ],
    copy: Annotated[
        bool, typer.Option("--copy", help="Writable copies instead of read-only links into the local cache.")
    ] = False,
) -> None:
    """Download a version into a directory, verified by sha256 and cached locally.

    DIR is replaced atomically; pulling the version it already holds does nothing. Files are
    read-only hard links into the local blob cache (~/.cache/tunelab), so pulling the same
    content again costs no transfer and no copy; --copy makes writable copies.

    Example:

        tunelab dataset pull advertisegen@2 ./data/AdvertiseGen
    """
    from tunelab.cli.output import human_bytes, short_version
    from tunelab.cli.progress import transfer

    client = _client(ctx)
    v = client.get_version(ref)
    label = short_version(v.name)
    with transfer(f"pulling {label}") as progress:
        r = client.pull(v.name, directory, progress, copy=copy)
    if r.unchanged:
        typer.echo(f"{directory} already holds {label}")
    else:
        typer.echo(
            f"pulled {label} into {directory}: {r.files} files, {human_bytes(r.bytes)} "
            f"({human_bytes(r.bytes_fetched)} downloaded) in {r.seconds:.1f}s"
        )


@app.command()
def push(
    ctx: typer.Context,
    name: NameArg,
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", exists=True, file_okay=False, help="The directory to upload.")
    ],
    output: OutputOpt = None,
) -> None:
    """Upload a local directory as a new version of an upload or empty dataset.

    Only content the store lacks is sent.

    Example:

        tunelab dataset push mydata ./data
    """
    from tunelab.cli.progress import transfer

    client = _client(ctx)
    with transfer(f"uploading {directory}") as progress:
        v = client.push(name, directory, progress)
    _result(fmt_of(ctx, output), v, _summary(v))


@app.command()
def files(ctx: typer.Context, ref: RefArg, output: OutputOpt = None) -> None:
    """List the files of a version: path, size, sha256.

    Example:

        tunelab dataset files advertisegen@latest
    """
    from tunelab.cli.output import render

    render(list(_client(ctx).list_files(ref)), fmt_of(ctx, output))


@app.command()
def transform(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            metavar="SRC[@VERSION]", help="The version to read.", autocompletion=complete.datasets
        ),
    ],
    to: Annotated[
        str, typer.Option("--to", help="Dataset to write a new version into (created if missing).")
    ],
    transform_name: Annotated[
        str, typer.Option("--transform", help="The built-in transform.")
    ] = "advertisegen-to-conversations",
    output: OutputOpt = None,
) -> None:
    """Derive a new version from another with a built-in transform.

    Example:

        tunelab dataset transform advertisegen --to advertisegen-conv
    """
    v = _client(ctx).transform(source, transform_name, to)
    _result(fmt_of(ctx, output), v, _summary(v))


@app.command("rm")
def remove(
    ctx: typer.Context,
    ref: RefArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a dataset with all its versions, or one version. Blobs are freed by `gc`.

    Examples:

        tunelab dataset rm advertisegen@1
        tunelab dataset rm advertisegen --yes
    """
    import sys

    what = f"version {ref}" if "@" in ref else f"dataset {ref} and all its versions"
    if not yes and sys.stdin.isatty():
        typer.confirm(f"Delete {what}?", abort=True)
    client = _client(ctx)
    if "@" in ref:
        client.delete_version(ref)
    else:
        client.delete(ref)
    typer.echo(f"deleted {what}")


@app.command()
def gc(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be deleted.")] = False,
    output: OutputOpt = None,
) -> None:
    """Delete stored file contents that no version references any more.

    Example:

        tunelab dataset gc --dry-run
    """
    from tunelab.cli.output import human_bytes

    r = _client(ctx).gc(dry_run)
    verb = "would delete" if dry_run else "deleted"
    line = f"{verb} {r.blobs_deleted} blobs ({human_bytes(r.bytes_deleted)}); {r.blobs_kept} kept"
    _result(fmt_of(ctx, output), r, line)
