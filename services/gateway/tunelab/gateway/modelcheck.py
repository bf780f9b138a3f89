"""What the gateway reads of a base model's directory before starting embedded engines on it: whether
it ships Python code of its own (``auto_map``), which the engine runs only when the deployment says so
(``upstream.embedded.trust_remote_code``). Refusing here is quicker and clearer than an engine that
starts and exits."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.common.errors import FailedPrecondition

CODE_FILES = ("config.json", "tokenizer_config.json")


def model_config(path: Path, name: str = "config.json") -> dict[str, object]:
    try:
        data = json.loads((path / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_remote_code(path: Path, ref: str, trusted: bool) -> None:
    """FailedPrecondition, saying what to do, when the model at ``path`` (called ``ref`` in the
    deployment) ships code of its own and ``trusted`` is off."""
    if trusted:
        return
    files = [name for name in CODE_FILES if model_config(path, name).get("auto_map")]
    if not files:
        return
    if model_config(path).get("model_type") == "chatglm":
        raise FailedPrecondition(
            f"the base model {ref} is ChatGLM3 in THUDM's layout, whose own model code (auto_map in "
            f"{' and '.join(files)}) was written for transformers 4.3x: import it once with `tunelab model "
            "import NAME --from DATASET` and deploy the imported model, which needs no remote code"
        )
    raise FailedPrecondition(
        f"the base model {ref} ships its own Python code (auto_map in {' and '.join(files)}), which the "
        "embedded engine runs only when the deployment allows it: deploy with --trust-remote-code "
        "(upstream.embedded.trust_remote_code), and only for a model repository you trust"
    )
