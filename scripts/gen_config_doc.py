"""Writes docs/configuration.md from the services' settings classes (every ``TUNELAB_*`` variable a
service reads), plus the variables the CLI, the job agent and jobs use.

    python scripts/gen_config_doc.py          # rewrite the file
    python scripts/gen_config_doc.py --check  # exit 1 when it is stale (a test runs this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from tunelab.common.settings import ServiceSettings
from tunelab.datasets.settings import DatasetSettings
from tunelab.environments.settings import EnvironmentSettings
from tunelab.gateway.settings import GatewaySettings
from tunelab.trainer.settings import TrainerSettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

SERVICES: list[tuple[str, type[BaseSettings]]] = [
    ("datasets", DatasetSettings),
    ("environments", EnvironmentSettings),
    ("trainer", TrainerSettings),
    ("gateway", GatewaySettings),
]

# Read outside the settings classes: by the CLI, `tunelab up`, the job agent and the jobs it runs.
OTHERS: list[tuple[str, str, str]] = [
    (
        "TUNELAB_TOKEN",
        "CLI",
        "The stack token sent to every service; else the config file, else `tunelab up`'s token file.",
    ),
    ("TUNELAB_CONFIG", "CLI", "The CLI's config file; default `~/.config/tunelab/config.yaml`."),
    ("TUNELAB_DATASETS_ADDR", "CLI, gateway, trainer", "host:port of the datasets service."),
    ("TUNELAB_ENVIRONMENTS_ADDR", "CLI, trainer", "host:port of the environments service."),
    ("TUNELAB_TRAINER_ADDR", "CLI, gateway", "host:port of the trainer."),
    ("TUNELAB_GATEWAY_ADDR", "CLI", "host:port of the gateway's gRPC API."),
    ("TUNELAB_GATEWAY_URL", "CLI", "The gateway's HTTP front door (`model generate`)."),
    ("TUNELAB_OUTPUT", "CLI", "Output format: table, json or yaml."),
    ("TUNELAB_API_KEY", "CLI", "The API key `tunelab model generate` sends."),
    ("TUNELAB_DATASETS", "CLI", "Mounts `job submit` adds, NAME[@V]:PATH,…: what a notebook has mounted."),
    (
        "TUNELAB_PORT_BASE",
        "`tunelab up`",
        "First gRPC port of the local stack (datasets; the others follow).",
    ),
    ("TUNELAB_METRICS_PORT_BASE", "`tunelab up`", "First metrics port of the local stack."),
    (
        "TUNELAB_<SERVICE>_PORT",
        "`tunelab up`",
        "Moves one service's gRPC port, e.g. TUNELAB_DATASETS_PORT=6000.",
    ),
    (
        "TUNELAB_AGENT_FILESYSTEM",
        "job agent",
        "private (a mount namespace per attempt) or pod (the pod is the view).",
    ),
    (
        "TUNELAB_AGENT_SCRATCH",
        "job agent",
        "Where attempts are staged; default: the trainer's runs directory.",
    ),
    ("TUNELAB_AGENT_DEFAULT_WORKDIR", "job agent", "Working directory of a job that names none."),
    ("TUNELAB_AGENT_*", "job agent", "Any other agent setting, as the trainer passes it."),
    ("TUNELAB_CACHE_DIR", "job agent", "Blob and environment cache of the agent."),
    ("TUNELAB_EXECUTOR_NOTES", "job agent", "Lines the executor asks the agent to write into the job's log."),
    ("TUNELAB_JOB", "jobs", "The job's resource name (jobs/ID), set by the executor."),
    ("TUNELAB_ATTEMPT", "jobs", "The attempt number, set by the executor."),
    ("TUNELAB_WORKER", "jobs", "The worker index of a multi-worker job."),
    ("TUNELAB_NODE", "jobs", "The node the attempt runs on."),
    ("TUNELAB_METRICS_FILE", "LoRA recipe", "Also write the recipe's metric lines to this file."),
    (
        "TUNELAB_ENGINE_API_KEY",
        "engine",
        "The key the embedded engine requires (the gateway sets a random one).",
    ),
]


def shown(value: Any) -> str:
    """A default as the doc shows it: the same on every machine."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "" or value == () or value == []:
        return "(empty)"
    text = str(value)
    if text == sys.executable:
        return "the Python running the service"
    home = str(Path.home())
    if text.startswith(home + "/"):
        return "~" + text[len(home) :]
    if isinstance(value, dict):
        import json

        return json.dumps(value)
    return text


def default_of(field: FieldInfo) -> Any:
    return field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]


def table(fields: dict[str, FieldInfo]) -> list[str]:
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for name, field in fields.items():
        what = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `TUNELAB_{name.upper()}` | `{shown(default_of(field))}` | {what} |")
    return rows


def render() -> str:
    lines = [
        "# Configuration",
        "",
        "Every service reads its settings once at start from `TUNELAB_*` environment variables; a bad",
        "value stops it with a message naming the variable. This file is generated from the settings",
        "classes by `python scripts/gen_config_doc.py` (a test fails when it is stale).",
        "",
        "## Every service",
        "",
        *table(dict(ServiceSettings.model_fields)),
    ]
    shared = set(ServiceSettings.model_fields)
    for name, cls in SERVICES:
        own = {k: v for k, v in cls.model_fields.items() if k not in shared}
        lines += ["", f"## {name}", "", *table(own)]
    lines += [
        "",
        "## The CLI, `tunelab up`, the job agent and jobs",
        "",
        "| variable | read by | what it does |",
        "|---|---|---|",
    ]
    lines += [f"| `{var}` | {who} | {what} |" for var, who, what in OTHERS]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC.name} is stale: run python scripts/gen_config_doc.py", file=sys.stderr)
            return 1
        print(f"{DOC.name} is current")
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
