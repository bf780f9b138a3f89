"""THUDM's own ChatGLM3 model (the fixture's `modeling_chatglm.py`), loaded under transformers 5.

THUDM's code targets transformers 4.3x. It is imported from the checkpoint folder as it is (never
copied into the project) and the incompatibilities are patched in memory, on the objects, from here:

- `ChatGLMConfig` no longer has the generic `max_length` (read by `ChatGLMForConditionalGeneration.__init__`,
  never used) and `use_cache` (read by every forward): set to transformers 4's defaults when absent.
- `from_pretrained` needs `post_init()`, which the model's `__init__` never calls. It is not used at all:
  the model is built on the config, `post_init()` is called, and the checkpoint's tensors are loaded with
  `load_state_dict(strict=True)`, so every tensor (inv_freq included) is checked against the model.
- `generate` breaks in several places (its cache handling predates transformers' Cache classes), so the
  tests decode greedily by hand (`greedy`): the full sequence again each step, no KV cache.

Each patch checks for the attribute first, so the same loader works on transformers 4.x and 5.x (the
lead's GPU benchmarks use 5.17). The module is imported as a package named after the folder's path, so a
modified copy of the fixture (a rope_ratio variant, say) loads its own code beside the original's.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_TRANSFORMERS_4_DEFAULTS = {"max_length": 20, "use_cache": True}


def thudm_modeling(folder: Path) -> types.ModuleType:
    """`modeling_chatglm` imported from `folder` (its relative import of the config module works)."""
    name = "thudm_chatglm_" + hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.modeling_chatglm")


def load_chatglm_model(folder: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Any:
    """THUDM's ChatGLMForConditionalGeneration with `folder`'s weights, in eval mode."""
    model = build_chatglm_model(folder, dtype=dtype, device=device)
    model.load_state_dict(_state_dict(folder), strict=True)
    return model.to(dtype).eval()


def build_chatglm_model(
    folder: Path,
    config: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> Any:
    """THUDM's model from `folder`'s code and config.json (or `config`), uninitialized ("meta": no memory)."""
    modeling = thudm_modeling(folder)
    if config is None:
        chatglm = modeling.ChatGLMConfig.from_pretrained(folder)
    else:
        chatglm = modeling.ChatGLMConfig(**config)
    for key, value in _TRANSFORMERS_4_DEFAULTS.items():
        if not hasattr(chatglm, key):
            setattr(chatglm, key, value)
    chatglm.torch_dtype = dtype  # read by THUDM's layers as they are built (an alias of `dtype` in 5.x)
    # empty_init: THUDM's skip_init builds the layers uninitialized on `device` (the caller loads them)
    model = modeling.ChatGLMForConditionalGeneration(chatglm, empty_init=True, device=device)
    model.post_init()
    return model


def copy_checkpoint(src: Path, dst: Path, **config_changes: Any) -> Path:
    """A writable copy of a checkpoint folder, with config.json keys changed (None removes one)."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)  # copyfile: not the fixture's read-only mode
    config = json.loads((dst / "config.json").read_text())
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def randomize_norms_and_biases(folder: Path, seed: int = 0) -> Path:
    """Give the checkpoint's RMSNorm weights and q/k/v biases random values, in place.

    The fixture has ones and zeros there (as a fresh model would), which would let a mapping that swaps
    two norms or the q/k/v bias slices pass unnoticed; the exactness tests run on this copy instead.
    """
    path = folder / "model.safetensors"
    state = load_file(path)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in state.items():
        if name.endswith("layernorm.weight"):
            state[name] = 1 + 0.3 * torch.randn(tensor.shape, generator=generator)
        elif name.endswith(".bias"):
            state[name] = 0.5 * torch.randn(tensor.shape, generator=generator)
    save_file(state, path, metadata={"format": "pt"})
    return folder


# The one difference in rotary code between THUDM's chatglm3-6b and chatglm3-6b-32k revisions: the latter
# takes `rope_ratio` from the config and multiplies the rotary base by it (chatglm3-6b ignores the key).
_ROPE_RATIO_REVISION = [  # (old, new), each old found once
    ("(self, dim, original_impl=False,", "(self, dim, rope_ratio=1, original_impl=False,"),
    (
        "self.original_impl = original_impl\n",
        "self.original_impl = original_impl; self.rope_ratio = rope_ratio\n",
    ),
    (
        "        theta = 1.0 / (base **",
        "        base = base * self.rope_ratio\n        theta = 1.0 / (base **",
    ),
    ("(rotary_dim // 2, original_impl=", "(rotary_dim // 2, rope_ratio=config.rope_ratio, original_impl="),
]


def use_rope_ratio_code(folder: Path) -> None:
    """Edit the copy's modeling_chatglm.py into the 32k revision's rotary code (THUDM's, in a test folder)."""
    path = folder / "modeling_chatglm.py"
    code = path.read_text()
    for old, new in _ROPE_RATIO_REVISION:
        assert code.count(old) == 1, f"modeling_chatglm.py: expected one {old!r}"
        code = code.replace(old, new)
    path.write_text(code)


def _state_dict(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else []
    state: dict[str, torch.Tensor] = {}
    for file in files or ["model.safetensors"]:
        state |= load_file(folder / file)
    return state


@torch.no_grad()
def greedy(model: Any, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding by hand, the whole sequence each step (no cache): `new_tokens` ids after `prompt`."""
    ids = list(prompt)
    for _ in range(new_tokens):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def left_padded(prompts: list[list[int]], pad: int = 0) -> dict[str, torch.Tensor]:
    """A left-padded batch as ChatGLM3's tokenizer pads for generation: pads first, at position 0.

    position_ids count real tokens only (0, 1, ... from each prompt's first token), as the tokenizer's
    `_pad` builds them; both models get the same ids, mask and positions.
    """
    width = max(map(len, prompts))
    ids = [[pad] * (width - len(p)) + p for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    positions = [[0] * (width - len(p)) + list(range(len(p))) for p in prompts]
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "position_ids": torch.tensor(positions),
    }
