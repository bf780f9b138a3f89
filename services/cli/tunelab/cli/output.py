"""``-o table|json|yaml``: how commands print resources.

json and yaml are the messages' canonical JSON form (``MessageToDict`` with proto field names,
every field present, int64 as numbers); table picks a few columns per resource. Heavy imports
stay inside functions so that importing this module (for :class:`Format`) keeps ``tunelab --help``
fast.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp
    from rich.console import Console


class Format(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


# Every command that prints a resource takes this option; None: the `output` setting (table).
OutputOpt = Annotated[
    Format | None,
    typer.Option(
        "--output", "-o", help="table, json or yaml (default: table, or `output` in the config file)."
    ),
]


def fmt_of(ctx: typer.Context, output: Format | None) -> Format:
    """The format a command prints in: its -o, else the `output` setting."""
    return output or Format(ctx.obj.config.output)


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """75 → '1m15s'."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def age(ts: Timestamp) -> str:
    if not ts.seconds:
        return ""
    return human_duration(max(0.0, time.time() - ts.seconds))


def short_version(name: str) -> str:
    """``datasets/x/versions/3`` → ``x@3``."""
    parts = name.split("/")
    return f"{parts[1]}@{parts[3]}" if len(parts) == 4 else name


def dataset_label(dataset: Any) -> str:
    """``advertisegen``, or ``advertisegen (AdvertiseGen)`` for one created with another spelling."""
    ident = str(dataset.name).removeprefix("datasets/")
    spelling = str(dataset.display_name)
    return f"{ident} ({spelling})" if spelling and spelling != ident else ident


def state_name(version: Any) -> str:
    return str(version.State.Name(version.state)).removeprefix("STATE_")


def source_summary(source: Any) -> str:
    kind = source.WhichOneof("kind")
    if kind is None:
        return ""
    s = getattr(source, kind)
    if kind == "http":
        return str(s.url)
    if kind == "git":
        return f"git:{s.url}" + (f"@{s.ref}" if s.ref else "")
    if kind == "s3":
        return f"s3://{s.bucket}/{s.prefix}" + (f" ({s.endpoint})" if s.endpoint else "")
    if kind == "hf":
        return f"hf:{s.repo_id}" + (f"@{s.revision}" if s.revision else "")
    if kind == "dataset":
        return f"{s.transform} of {short_version(s.version)}"
    return str(kind)


def version_detail(v: Any) -> str:
    if v.error:
        return str(v.error)
    p = v.progress
    if state_name(v) in ("READY", "FAILED") or not p.phase:
        return ""
    size = f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)}"
    return f"{p.phase} {p.files_done}/{p.files_total} files, {size}"


Column = tuple[str, Callable[[Any], object]]
COLUMNS: dict[str, list[Column]] = {
    "tunelab.datasets.v1.Dataset": [
        ("NAME", dataset_label),
        ("SOURCE", lambda d: source_summary(d.source)),
        ("LATEST", lambda d: short_version(d.latest_version) if d.latest_version else "-"),
        ("VERSIONS", lambda d: d.version_count),
        ("AGE", lambda d: age(d.create_time)),
        ("DESCRIPTION", lambda d: d.description),
    ],
    "tunelab.datasets.v1.DatasetVersion": [
        ("VERSION", lambda v: short_version(v.name)),
        ("STATE", state_name),
        ("FILES", lambda v: v.file_count),
        ("SIZE", lambda v: human_bytes(v.size_bytes)),
        ("AGE", lambda v: age(v.create_time)),
        ("DETAIL", version_detail),
    ],
    "tunelab.datasets.v1.DatasetFile": [
        ("PATH", lambda f: f.path),
        ("SIZE", lambda f: human_bytes(f.size)),
        ("SHA256", lambda f: f.sha256[:12]),
        ("MODE", lambda f: oct(f.mode or 0o644)[2:]),
    ],
    "tunelab.datasets.v1.GarbageCollectBlobsResponse": [
        ("BLOBS DELETED", lambda r: r.blobs_deleted),
        ("BYTES DELETED", lambda r: human_bytes(r.bytes_deleted)),
        ("BLOBS KEPT", lambda r: r.blobs_kept),
    ],
}


def to_dict(msg: Message) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(
        msg,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,  # scripts can rely on every field being there
        unquote_int64_if_possible=True,
    )


def stdout_console() -> Console:
    from rich.console import Console

    console = Console()  # resolves sys.stdout now, so test runners that swap it are honoured
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))  # pipes: do not fold columns at 80
    return console


def render(items: Message | Sequence[Message], fmt: Format | str) -> None:
    """Prints one message or a list of messages of the same type."""
    single = not isinstance(items, Sequence)
    messages: list[Message] = [items] if single else list(items)  # type: ignore[list-item]
    fmt = Format(fmt)
    if fmt is not Format.table:
        dicts = [to_dict(m) for m in messages]
        emit(dicts[0] if single else dicts, fmt)
        return
    if not messages:
        stdout_console().print("no items", style="dim")
        return
    full_name = messages[0].DESCRIPTOR.full_name
    columns = COLUMNS.get(full_name) or _scalar_columns(messages[0])
    rows = [[col(m) for _, col in columns] for m in messages]
    table_out([name for name, _ in columns], rows)


def render_rows(rows: list[dict[str, Any]], fmt: Format | str) -> None:
    """Prints plain records (e.g. ``tunelab status``), columns from the first record's keys."""
    fmt = Format(fmt)
    if fmt is not Format.table:
        emit(rows, fmt)
        return
    headers = list(rows[0]) if rows else []
    table_out([h.upper() for h in headers], [[r[h] for h in headers] for r in rows])


def emit(data: object, fmt: Format) -> None:
    if fmt is Format.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


def table_out(headers: list[str], rows: list[list[object]]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for h in headers:
        table.add_column(h, overflow="fold", no_wrap=h in ("NAME", "VERSION", "STATE", "SIZE", "AGE"))
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))  # Text: no markup in values
    stdout_console().print(table)


def _scalar_columns(msg: Message) -> list[Column]:
    from google.protobuf.descriptor import FieldDescriptor

    fields = [
        f
        for f in msg.DESCRIPTOR.fields
        if f.type != FieldDescriptor.TYPE_MESSAGE and not getattr(f, "is_repeated", False)
    ]
    return [(f.name.upper(), _enum_getter(f) if f.enum_type else _getter(f.name)) for f in fields]


def _getter(name: str) -> Callable[[Any], object]:
    return lambda msg: getattr(msg, name)


def _enum_getter(field: Any) -> Callable[[Any], object]:
    """An enum column by name, less its type's prefix: an ApiKey's ``state`` 1 → ``ACTIVE``."""
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", field.enum_type.name).upper() + "_"

    def name(msg: Any) -> object:
        number = getattr(msg, field.name)
        value = field.enum_type.values_by_number.get(number)
        return value.name.removeprefix(prefix) if value else number

    return name
