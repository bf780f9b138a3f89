"""ChatGLM3 for the recipe tests: the fixture checkpoint imported as transformers' `glm`, and references.

- `import_chatglm3(src, dst)`: the model imported by `tunelab.recipes.glm` (GlmForCausalLM + fast tokenizer);
- `thudm_tokenizer(src)`, `thudm_model(src)`, `randomized_copy(src, dst)`: THUDM's own code, through
  tests/glm's loaders;
- `process_batch(...)`: ChatGLM3's finetune_hf.py `process_batch`, rewritten from its description.
THUDM's code is loaded from the fixture, never copied.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]


def _tests_glm(name: str) -> ModuleType:
    """tests/glm/<name>.py: that suite's loaders of THUDM's code under transformers 5."""
    path = REPO / "tests" / "glm" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tests_glm_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_chatglm3(src: Path, dst: Path) -> Path:
    """`src` (THUDM's layout) imported by `tunelab.recipes.glm` into `dst`."""
    from tunelab.recipes.glm.importer import import_checkpoint

    import_checkpoint(src, dst)
    return dst


def thudm_tokenizer(src: Path) -> Any:
    return _tests_glm("thudm_tokenizer").load_chatglm_tokenizer(src)


def thudm_model(src: Path, dtype: torch.dtype = torch.float32) -> Any:
    return _tests_glm("thudm_model").load_chatglm_model(src, dtype)


def randomized_copy(src: Path, dst: Path) -> Path:
    """A copy of the fixture whose norms and q/k/v biases are random (the fixture has ones and zeros)."""
    module = _tests_glm("thudm_model")
    return module.randomize_norms_and_biases(module.copy_checkpoint(src, dst))  # type: ignore[no-any-return]


def process_batch(
    tokenizer: Any, conversations: list[list[dict[str, str]]], max_input_length: int, max_output_length: int
) -> tuple[list[list[int]], list[list[int]]]:
    """finetune_hf.py's process_batch (ChatGLM3 @ 732294f) as the notes describe it, tools left out."""
    batched_input_ids, batched_labels = [], []
    for conv in conversations:
        input_ids = [tokenizer.get_command("[gMASK]"), tokenizer.get_command("sop")]
        loss_masks = [False, False]
        for message in conv:
            loss_mask_val = message["role"] not in ("system", "user")
            new_input_ids = tokenizer.build_single_message(message["role"], "", message["content"])
            input_ids += new_input_ids
            loss_masks += [loss_mask_val] * len(new_input_ids)
        input_ids.append(tokenizer.eos_token_id)
        loss_masks = [False, *loss_masks]
        labels = [i if mask else -100 for i, mask in zip(input_ids, loss_masks, strict=True)]
        max_length = max_input_length + max_output_length + 1
        batched_input_ids.append(input_ids[:max_length])
        batched_labels.append(labels[:max_length])
    return batched_input_ids, batched_labels
