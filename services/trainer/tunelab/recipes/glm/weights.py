"""ChatGLM3's config.json and tensors -> transformers' `glm` (`GlmForCausalLM`), shard by shard.

The mapping (the architectures are the same maths; `glm_config` refuses every config they are not):

    transformer.embedding.word_embeddings.weight        -> model.embed_tokens.weight
    transformer.encoder.layers.N.input_layernorm         -> model.layers.N.input_layernorm
    ....self_attention.query_key_value (weight, bias)    -> self_attn.q_proj / k_proj / v_proj (row split)
    ....self_attention.dense                             -> self_attn.o_proj
    ....post_attention_layernorm                         -> post_attention_layernorm
    ....mlp.dense_h_to_4h                                -> mlp.gate_up_proj (kept fused: [gate; up])
    ....mlp.dense_4h_to_h                                -> mlp.down_proj
    transformer.encoder.final_layernorm.weight           -> model.norm.weight
    transformer.output_layer.weight                      -> lm_head.weight
    transformer.rotary_pos_emb.inv_freq                  -> dropped (recomputed from rope_theta)

query_key_value is [all q | all k | all v] rows (q: heads x kv_channels, k and v: groups x kv_channels
each), so the split is a plain row slice. dense_h_to_4h stays fused: ChatGLM's swiglu chunks it in two
and applies SiLU to the first half, as GlmMLP's `gate, up = chunk(2)` does.

Memory: one input shard -> one output shard. Tensors are read one at a time from the (memory-mapped)
input and kept, converted, until their output shard is written; nothing of a shard is alive when the
next is read (tested). The peak is about one output shard plus the tensor in flight, under 2x the
largest shard, never the whole model (ChatGLM3-6B comes in 7 shards of ~1.8 GB). All headers are checked
before anything is written (names, shapes, dtypes, the index, truncation), so a bad checkpoint fails
in seconds. Files are written into a temporary folder inside `dst` and moved up only when all are
complete; on any error nothing of them is left (and `dst` is removed if this call created it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tunelab.recipes.glm.config import CONFIG, chatglm_shapes, check_rope_code, glm_config, read_config
from tunelab.recipes.glm.errors import CheckpointError
from tunelab.recipes.glm.shards import Shard, find_shards, read_headers, read_shard

__all__ = ["ConversionSummary", "convert_weights", "glm_config", "glm_shapes"]

Progress = Callable[[str, int, int], None]  # ("weights", bytes converted, bytes in all) per tensor

INV_FREQ = "transformer.rotary_pos_emb.inv_freq"  # a buffer THUDM saves; carries nothing (recomputed)
_LAYERS = "transformer.encoder.layers."
_RENAMES = {  # per layer, THUDM suffix -> GLM suffix (query_key_value is split, below)
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
QKV = "self_attention.query_key_value"
_OUTPUTS = ("config.json", "generation_config.json", "model.safetensors.index.json")


@dataclass(frozen=True)
class ConversionSummary:
    shards: int
    tensors: int  # written, after the q/k/v split
    parameters: int
    bytes: int  # of the safetensors written
    dtype: str  # e.g. "float16": the source's, kept

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def convert_weights(
    src: Path, dst: Path, *, stop_token_ids: list[int], progress: Progress | None = None
) -> ConversionSummary:
    """Convert the ChatGLM3 checkpoint in `src` into GlmForCausalLM's files in `dst`.

    Writes config.json, generation_config.json (eos = `stop_token_ids`) and one safetensors shard per
    input shard (+ model.safetensors.index.json when there are several); tokenizer files are not
    written here. `dst` is created, or an existing folder without model files (the importer's staging
    folder, holding the tokenizer). The files are written into a temporary folder inside `dst` and
    moved up when all are complete. Raises CheckpointError naming the file (and tensor or key), with
    `dst` as it was: absent if it was, else without any file of this conversion.
    """
    chatglm = read_config(src)
    config, generation = glm_config(chatglm, stop_token_ids=stop_token_ids)
    check_rope_code(src, chatglm)
    shards = find_shards(src)
    shards, dtype, total = _check_headers(shards, chatglm_shapes(chatglm))
    config["dtype"] = str(dtype).removeprefix("torch.")  # the tensors win over config.json's torch_dtype
    clash = sorted(p.name for p in dst.glob("*") if p.name in _OUTPUTS or p.match("model*.safetensors"))
    if clash:
        raise CheckpointError(f"{dst}: already holds {clash[0]}; import into an empty folder")

    created = not dst.exists()
    dst.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".weights-partial-", dir=dst))
    moved: list[Path] = []
    try:
        weight_map, parameters = _write_shards(shards, tmp, qkv_sizes(chatglm), total, progress)
        written = sum(p.stat().st_size for p in tmp.iterdir())
        if len(shards) > 1:
            index = {"metadata": {"total_size": written}, "weight_map": dict(sorted(weight_map.items()))}
            _write_json(tmp / "model.safetensors.index.json", index)
        _write_json(tmp / "generation_config.json", generation)
        _write_json(tmp / "config.json", config)  # last: a folder with config.json has all of it
        for path in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):
            os.replace(path, dst / path.name)
            moved.append(dst / path.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for path in moved:
            path.unlink(missing_ok=True)
        if created:
            shutil.rmtree(dst, ignore_errors=True)
        raise
    return ConversionSummary(len(shards), len(weight_map), parameters, written, config["dtype"])


def _write_shards(
    shards: list[Shard], tmp: Path, dims: tuple[int, int, int], total: int, progress: Progress | None
) -> tuple[dict[str, str], int]:
    """One output shard per input shard: (GLM tensor name -> file, parameters)."""
    weight_map: dict[str, str] = {}
    parameters = 0
    done = [0]

    def advance(nbytes: int) -> None:
        done[0] += nbytes
        if progress:
            progress("weights", done[0], total)

    advance(0)
    for i, shard in enumerate(shards):
        name = (
            "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        )
        out = _convert_shard(shard, dims, advance)
        save_file(out, tmp / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(out, name))
        parameters += sum(t.numel() for t in out.values())
        del out  # nothing of this shard stays alive while the next one is read
    return weight_map, parameters


def _convert_shard(
    shard: Shard, dims: tuple[int, int, int], advance: Callable[[int], None]
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in read_shard(shard):
        out.update(_convert(name, tensor, dims))
        advance(tensor.numel() * tensor.element_size())
    return out


def glm_shapes(chatglm: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The converted model's tensor names and shapes: THUDM's, mapped as `convert_weights` maps them."""
    dims = qkv_sizes(chatglm)
    shapes = {}
    for name, shape in chatglm_shapes(chatglm).items():
        for glm_name, tensor in _convert(name, torch.empty(shape, device="meta"), dims):
            shapes[glm_name] = tuple(tensor.shape)
    return shapes


def qkv_sizes(chatglm: dict[str, Any]) -> tuple[int, int, int]:
    # From the config, not hidden_size // heads: kv_channels is the head size ChatGLM uses.
    kv = int(chatglm["kv_channels"])
    groups = int(chatglm["multi_query_group_num"]) if chatglm.get("multi_query_attention") else None
    heads = int(chatglm["num_attention_heads"])
    return heads * kv, (groups or heads) * kv, (groups or heads) * kv


def _convert(name: str, tensor: torch.Tensor, dims: tuple[int, int, int]) -> list[tuple[str, torch.Tensor]]:
    if name == INV_FREQ:
        return []
    if name in _TOP:
        return [(_TOP[name], tensor)]
    layer, _, suffix = name.removeprefix(_LAYERS).partition(".")
    prefix = f"model.layers.{layer}."
    if suffix in _RENAMES:
        return [(prefix + _RENAMES[suffix], tensor)]
    kind = suffix.removeprefix(QKV + ".")  # weight or bias
    q, k, v = torch.split(tensor, list(dims), dim=0)
    # clone: safetensors refuses tensors that share storage, and the slices would keep all of qkv alive
    return [(f"{prefix}self_attn.{p}_proj.{kind}", t.clone()) for p, t in zip("qkv", (q, k, v), strict=True)]


def _check_headers(
    shards: list[Shard], shapes: dict[str, tuple[int, ...]]
) -> tuple[list[Shard], torch.dtype, int]:
    """Every expected tensor once, with its shape, nothing else, one dtype: checked before any writing.

    Returns the shards with the names they hold, the dtype and the bytes of all tensors.
    """
    seen: dict[str, str] = {}
    dtypes: dict[torch.dtype, str] = {}
    total = 0
    checked = []
    for shard in shards:
        held = read_headers(shard.path)
        if shard.names and set(shard.names) != set(held):
            listed = set(shard.names) - set(held)
            name = sorted(listed or set(held) - set(shard.names))[0]
            raise CheckpointError(
                f"{shard.path.name}: the index says it holds {name}, but it does not"
                if listed
                else f"{shard.path.name}: holds {name}, which the index does not list; download both again"
            )
        checked.append(Shard(shard.path, sorted(held)))
        for name, (shape, dtype) in held.items():
            if name not in shapes:
                raise CheckpointError(
                    f"{shard.path.name}: unknown tensor {name} — not part of ChatGLM3's layout "
                    "(a P-tuning prefix encoder, a quantized or a different model?)"
                )
            if name in seen:
                raise CheckpointError(f"{shard.path.name}: {name} is also in {seen[name]}; keep one copy")
            if shape != shapes[name]:
                raise CheckpointError(
                    f"{shard.path.name}: {name} has shape {list(shape)}, but {CONFIG} implies "
                    f"{list(shapes[name])}; the weights and config.json are from different models"
                )
            if name != INV_FREQ:
                if not dtype.is_floating_point:
                    raise CheckpointError(f"{shard.path.name}: {name} is {dtype}; only float weights convert")
                dtypes.setdefault(dtype, name)
            seen[name] = shard.path.name
            total += _nbytes(shape, dtype)
    missing = sorted(set(shapes) - set(seen) - {INV_FREQ})
    if missing:
        where = ", ".join(s.path.name for s in shards)
        raise CheckpointError(
            f"{missing[0]}: missing from the checkpoint (looked in {where}); download it again"
        )
    if len(dtypes) > 1:
        (a, first), (b, second) = list(dtypes.items())[:2]
        raise CheckpointError(f"{second} is {b} but {first} is {a}; a ChatGLM3 checkpoint has one dtype")
    return checked, next(iter(dtypes)), total


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return int(torch.Size(shape).numel()) * dtype.itemsize


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
