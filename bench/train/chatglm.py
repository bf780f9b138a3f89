"""THUDM's ChatGLM3 in the benchmark: its own model code with random weights, written to disk as a
download of THUDM/chatglm3-6b is laid out, its tokenizer, and finetune_hf.py's data format.

THUDM's code (`modeling_chatglm.py` and friends, from the test fixture `chatglm3-6b-tiny`, which also has
`config.full-size.json`, the real 6.24B config) is loaded, never copied into the project, through the
tests' loaders (`tests/glm/thudm_model.py`, `tests/glm/thudm_tokenizer.py`, imported by path), which
patch what transformers 5 breaks in memory. The folder this writes is a download's: 7 safetensors shards
of ~1.8 GB plus their index (fp16, as THUDM publishes them), `config.json`, `tokenizer.model`,
`tokenizer_config.json` and THUDM's four `.py` files, so the importer reads what it would read there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
CODE_FILES = ("configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py", "quantization.py")
FIXTURE = "chatglm3-6b-tiny"
HUB_SHARDS = 7  # THUDM/chatglm3-6b: model-0000N-of-00007.safetensors
SHAPE_KEYS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "multi_query_group_num",
    "kv_channels",
    "padded_vocab_size",
    "seq_length",
)


def find_code(given: Path | None) -> Path:
    """The folder with THUDM's code: --chatglm-code, $TUNELAB_CHATGLM3_FIXTURE, ../shared/fixtures/...
    beside the checkout, or bench/data/chatglm3-6b-tiny (a copy that travels to a GPU machine)."""
    env = os.environ.get("TUNELAB_CHATGLM3_FIXTURE")
    candidates = [given] if given else []
    candidates += [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "fixtures" / FIXTURE, REPO / "bench" / "data" / FIXTURE]
    for folder in candidates:
        if folder and (folder / "modeling_chatglm.py").is_file():
            return folder
    raise SystemExit(
        f"THUDM's ChatGLM3 code was not found in {', '.join(map(str, candidates))}: copy the fixture there "
        f"(`mkdir -p bench/data && cp -r ../shared/fixtures/{FIXTURE} bench/data/`) or pass --chatglm-code"
    )


def tests_module(name: str) -> Any:
    """tests/glm/<name>.py, imported by path (the tests' THUDM loaders)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "tests" / "glm" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def thudm_config(code: Path, tiny: bool) -> dict[str, Any]:
    """THUDM's config.json: the fixture's tiny one, or the real 6.24B model's."""
    config: dict[str, Any] = json.loads(
        (code / ("config.json" if tiny else "config.full-size.json")).read_text()
    )
    return config


def build_model(code: Path, config: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Any:
    """THUDM's ChatGLMForConditionalGeneration, made on `device` in `dtype` with random weights:
    N(0, 0.02) for matrices, embeddings and biases, ones for the RMSNorm weights."""
    model = tests_module("thudm_model").build_chatglm_model(
        code, config=config, dtype=dtype, device=str(device)
    )
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.config.use_cache = False  # as finetune_hf.py loads it
    return model


def write_checkpoint(
    model: Any, config: dict[str, Any], code: Path, sp_model: bytes, out: Path, shards: int
) -> dict[str, Any]:
    """`model` as a download of THUDM/chatglm3-6b: sharded safetensors + index, config.json, tokenizer
    files and THUDM's code. Returns sizes and the time taken (the copy from the GPU included)."""
    from safetensors.torch import save_file

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    dtype = next(iter(state.values())).dtype
    total = sum(t.numel() * t.element_size() for t in state.values())
    names = _split(state, total / shards)
    weight_map: dict[str, str] = {}
    sizes = []
    for i, group in enumerate(names, start=1):
        file = f"model-{i:05d}-of-{len(names):05d}.safetensors"
        tensors = {n: state[n].detach().to("cpu").contiguous() for n in group}
        save_file(tensors, out / file, metadata={"format": "pt"})
        sizes.append((out / file).stat().st_size)
        weight_map |= dict.fromkeys(group, file)
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    written = dict(config, torch_dtype=str(dtype).removeprefix("torch."))
    (out / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    (out / "tokenizer.model").write_bytes(sp_model)
    for name in (*CODE_FILES, "tokenizer_config.json"):
        shutil.copyfile(code / name, out / name)
    seconds = time.perf_counter() - started
    return {
        "shards": len(names),
        "bytes": sum(sizes),
        "largest_shard_bytes": max(sizes),
        "dtype": str(dtype).removeprefix("torch."),
        "seconds": seconds,
        "gb_per_second": sum(sizes) / 1e9 / seconds,
    }


def _split(state: dict[str, torch.Tensor], target: float) -> list[list[str]]:
    """Names in state-dict order, cut into groups of about `target` bytes (a tensor is never split)."""
    groups: list[list[str]] = [[]]
    size = 0.0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > target * 1.05:
            groups.append([])
            size = 0.0
        groups[-1].append(name)
        size += nbytes
    return groups


def load_tokenizer(folder: Path) -> Any:
    """THUDM's ChatGLMTokenizer on `folder`'s tokenizer.model (patched for transformers 5 by the tests)."""
    return tests_module("thudm_tokenizer").load_chatglm_tokenizer(folder)


def finetune_hf_rows(
    tokenizer: Any, rows: Iterable[dict[str, Any]], max_input_length: int, max_output_length: int
) -> list[dict[str, list[int]]]:
    """finetune_hf.py's `process_batch`, restated: `[gMASK] sop`, then per message
    `build_single_message(role, "", content)`, eos at the end; the loss mask (True on messages other than
    system and user) shifted right by one; a head slice of max_input + max_output + 1 tokens."""
    max_length = max_input_length + max_output_length + 1
    result = []
    for row in rows:
        ids = [tokenizer.get_command("[gMASK]"), tokenizer.get_command("sop")]
        mask = [False, False]
        for message in row["conversations"]:
            piece = tokenizer.build_single_message(message["role"], "", message["content"])
            ids += piece
            mask += [message["role"] not in ("system", "user")] * len(piece)
        ids.append(tokenizer.eos_token_id)
        labels = [t if m else -100 for t, m in zip(ids, [False, *mask], strict=True)]
        result.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
    return result


def padded_batch(tokenizer: Any, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """The baseline's collation of `rows`: DataCollatorForSeq2Seq over THUDM's tokenizer (left padding,
    attention_mask and position_ids from its `_pad`, labels padded with -100)."""
    from transformers import DataCollatorForSeq2Seq

    collator = DataCollatorForSeq2Seq(
        tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt"
    )
    return dict(collator([dict(r) for r in rows]))


@torch.no_grad()
def batch_loss(model: Any, batch: dict[str, torch.Tensor], device: torch.device) -> float:
    """The model's own mean loss (`labels=`) on a padded batch."""
    was_training = model.training
    model.eval()
    loss = float(model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).loss)
    model.train(was_training)
    return loss
