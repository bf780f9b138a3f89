"""``--source`` parsing for ``tunelab dataset create``: text → a Source message."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from tunelab.datasets.v1 import datasets_pb2 as pb

SOURCES = (
    ("https://… or http://…", "a file or an archive (.zip, .tar, .tar.gz, .tgz), unpacked"),
    ("git+https://…[@ref] or git:URL[@ref]", "a git repository at a branch, tag or commit"),
    ("s3://bucket/prefix", "a bucket on AWS or another S3-compatible server (see --s3-endpoint)"),
    ("upload:DIR or an existing DIR", "a local directory, uploaded from this machine"),
    ("hf:org/repo[@revision]", "a Hugging Face hub repository (hf:datasets/org/name for a dataset repo)"),
    ("empty", "no content yet: job outputs are written into it"),
)
SOURCE_HELP = "Where the content comes from: " + "; ".join(f"{k} ({v})" for k, v in SOURCES).replace(
    "[", r"\["
)


@dataclass(frozen=True)
class S3Options:
    endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    region: str = ""
    insecure: bool = False


def parse_source(
    text: str, s3: S3Options | None = None, hf_token: str = "", hf_endpoint: str = ""
) -> tuple[pb.Source, Path | None]:
    """``--source`` → a Source message, and the directory to upload for upload sources."""
    from tunelab.datasets.v1 import datasets_pb2 as pb

    s3 = s3 or S3Options()
    if text == "empty":
        return pb.Source(empty=pb.EmptySource()), None
    if text.startswith("git+") or text.startswith("git:"):
        url, ref = split_ref(text[4:])
        if not url:
            _bad_source(text, "name the repository, e.g. git+https://github.com/org/repo@main")
        return pb.Source(git=pb.GitSource(url=url, ref=ref)), None
    if text.startswith(("https://", "http://")):
        return pb.Source(http=pb.HttpSource(url=text)), None
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            _bad_source(text, "name the bucket, e.g. s3://bucket/prefix")
        endpoint, secure = s3.endpoint, not s3.insecure
        if endpoint.startswith(("http://", "https://")):
            secure = secure and endpoint.startswith("https://")
            endpoint = endpoint.split("://", 1)[1].rstrip("/")
        src = pb.S3Source(
            bucket=bucket, prefix=prefix, endpoint=endpoint, region=s3.region, secure=secure,
            access_key=s3.access_key, secret_key=s3.secret_key,
        )  # fmt: skip
        return pb.Source(s3=src), None
    if text.startswith("hf:"):
        repo, _, revision = text[len("hf:") :].partition("@")
        repo_type = "model"
        for kind in ("models", "datasets", "spaces"):
            if repo.startswith(f"{kind}/"):
                repo_type, repo = kind[:-1], repo[len(kind) + 1 :]
        if not repo or repo.count("/") > 1 or repo.startswith("/") or repo.endswith("/"):
            _bad_source(text, "name the repository as hf:org/name or hf:datasets/org/name")
        hf = pb.HuggingFaceSource(
            repo_id=repo, repo_type=repo_type, revision=revision, token=hf_token, endpoint=hf_endpoint
        )
        return pb.Source(hf=hf), None
    if text.startswith("upload:") or Path(text).expanduser().is_dir():
        directory = Path(text.removeprefix("upload:")).expanduser()
        if not directory.is_dir():
            _bad_source(text, f"{directory} is not a directory")
        return pb.Source(upload=pb.UploadSource()), directory.resolve()
    if "://" in text or (":" in text.split("/", 1)[0]):
        _bad_source(text, "unknown kind of source")
    _bad_source(text, f"no such directory: {text}")


def split_ref(url: str) -> tuple[str, str]:
    """``https://host/org/repo@v1`` → (``https://host/org/repo``, ``v1``); an ``@`` in the user part
    of the URL (``https://me@host/…``, ``git@host:org/repo``) is not a ref."""
    if "://" in url:
        start = url.find("/", url.index("://") + 3)
    elif ":" in url:
        start = url.index(":")  # scp-like: user@host:path
    else:
        start = 0
    if start < 0 or "@" not in url[start:]:
        return url, ""
    at = url.index("@", start)
    return url[:at], url[at + 1 :]


def _bad_source(text: str, why: str) -> NoReturn:
    kinds = ", ".join(k for k, _ in SOURCES)
    raise typer.BadParameter(f"{text!r}: {why}. Valid sources: {kinds}.", param_hint="'--source'")


def parse_labels(values: list[str]) -> dict[str, str]:
    labels = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="'--label'")
        labels[key] = value
    return labels
