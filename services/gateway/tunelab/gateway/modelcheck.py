"""What the gateway reads of a base model (and of an adapter) before a server is started on it:
whether it is a model at all (a ``config.json`` naming its architecture), whether it ships Python
code of its own (``auto_map``), which servers run only when the deployment says so
(``trust_remote_code``), and an adapter's LoRA rank. Refusing here, with one line that says what is
missing, is quicker and clearer than a server that starts, prints a traceback and exits.

The checks read file contents (``{name: bytes}``), so they serve both a directory the gateway has
materialized and a dataset version a workload will mount, read through the datasets service.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from tunelab.common.errors import FailedPrecondition

CODE_FILES = ("config.json", "tokenizer_config.json")
ADAPTER_CONFIG = "adapter_config.json"


def parse_json(raw: bytes | None) -> dict[str, object]:
    try:
        data = json.loads(raw) if raw is not None else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def read_files(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    found = {}
    for name in names:
        try:
            found[name] = (path / name).read_bytes()
        except OSError:
            pass
    return found


def check_is_model(files: Mapping[str, bytes], ref: str) -> None:
    """FailedPrecondition, in one line naming ``ref`` and what is missing, unless ``files`` has a
    ``config.json`` transformers can tell the architecture from (``model_type``, or code of its own)."""
    raw = files.get("config.json")
    if raw is None:
        raise FailedPrecondition(
            f"the base model {ref} is not a model: it has no config.json (a Hugging Face model directory "
            "holds config.json, the tokenizer's files and the weights; if the model sits in a folder of "
            "the dataset, name it: --base DATASET:FOLDER)"
        )
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise FailedPrecondition(
            f"the base model {ref} is not a model: its config.json is not valid JSON ({exc})"
        ) from None
    if not isinstance(data, dict) or not (data.get("model_type") or data.get("auto_map")):
        raise FailedPrecondition(
            f"the base model {ref} is not a model transformers can read: its config.json has no "
            "model_type naming the architecture"
        )


def check_remote_code(files: Mapping[str, bytes], ref: str, trusted: bool, option: str) -> None:
    """FailedPrecondition, saying what to do, when the model (called ``ref`` in the deployment)
    ships code of its own and ``trusted`` is off; ``option`` is the deployment field that allows it."""
    if trusted:
        return
    code = [name for name in CODE_FILES if parse_json(files.get(name)).get("auto_map")]
    if not code:
        return
    if parse_json(files.get("config.json")).get("model_type") == "chatglm":
        raise FailedPrecondition(
            f"the base model {ref} is ChatGLM3 in THUDM's layout, whose own model code (auto_map in "
            f"{' and '.join(code)}) was written for transformers 4.3x: import it once with `tunelab model "
            "import NAME --from DATASET` and deploy the imported model, which needs no remote code"
        )
    raise FailedPrecondition(
        f"the base model {ref} ships its own Python code (auto_map in {' and '.join(code)}), which the "
        f"server runs only when the deployment allows it: deploy with --trust-remote-code ({option}), "
        "and only for a model repository you trust"
    )


def check_model_dir(path: Path, ref: str, trusted: bool, option: str) -> None:
    """Both checks on a local directory. A path that is no directory here is left to the engine
    (a hub id, where a hub is reachable)."""
    if not path.is_dir():
        return
    files = read_files(path, CODE_FILES)
    check_remote_code(files, ref, trusted, option)
    check_is_model(files, ref)


def adapter_rank(files: Mapping[str, bytes], name: str, ref: str) -> int:
    """The adapter's largest LoRA rank (``r``, or a larger one in ``rank_pattern``); 0 when unknown."""
    raw = files.get(ADAPTER_CONFIG)
    if raw is None:
        raise FailedPrecondition(
            f"adapter {name} ({ref}) is not a LoRA adapter: it has no {ADAPTER_CONFIG} (point --adapter "
            "at the folder holding it, e.g. output@3:checkpoint-3000)"
        )
    data = parse_json(raw)
    ranks = [data.get("r")]
    pattern = data.get("rank_pattern")
    if isinstance(pattern, dict):
        ranks += list(pattern.values())
    return max((r for r in ranks if isinstance(r, int)), default=0)
