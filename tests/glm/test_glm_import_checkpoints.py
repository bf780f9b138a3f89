"""The import's handling of checkpoint folders: shards, .bin files, memory, bad input, and the round trip."""

from __future__ import annotations

import gc
import json
import re
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import GlmForCausalLM

from thudm_model import copy_checkpoint, use_rope_ratio_code
from tunelab.recipes.glm import weights
from tunelab.recipes.glm.errors import CheckpointError
from tunelab.recipes.glm.layout import write_chatglm3_layout
from tunelab.recipes.glm.weights import convert_weights

STOP = [2, 1206, 1208]
LAYER1 = "transformer.encoder.layers.1."


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    result: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        result |= load_file(file)
    return result


def _sharded(src: Path, dst: Path, shards: int, fmt: str = "safetensors") -> Path:
    """`src` re-saved as `shards` files + an index, as large downloads come (.bin: pytorch_model-*.bin)."""
    copy_checkpoint(src, dst)
    state = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    names = sorted(state)
    weight_map: dict[str, str] = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        if fmt == "bin":
            file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        if fmt == "bin":
            torch.save(part, dst / file)
        else:
            save_file(part, dst / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (dst / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


@pytest.fixture(scope="module")
def reference(chatglm3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The single-file fixture's converted tensors."""
    dst = tmp_path_factory.mktemp("reference") / "model"
    convert_weights(chatglm3_dir, dst, stop_token_ids=STOP)
    return _tensors(dst)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_shards_convert_to_the_same_tensors(
    chatglm3_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor], fmt: str
) -> None:
    src = _sharded(chatglm3_dir, tmp_path / "src", shards=2, fmt=fmt)
    progress: list[tuple[str, int, int]] = []
    summary = convert_weights(
        src, tmp_path / "dst", stop_token_ids=STOP, progress=lambda *a: progress.append(a)
    )
    converted = _tensors(tmp_path / "dst")
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[n], reference[n]) for n in reference)
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(reference)
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert (summary.shards, summary.tensors, summary.parameters) == (2, len(reference), 238_144)
    total = progress[-1][2]  # every source byte, inv_freq included: a bar that ends at 100%
    assert progress[0] == ("weights", 0, total) and progress[-1] == ("weights", total, total)
    assert len(progress) == 1 + 18  # a call per source tensor


def test_fp16_stays_fp16(chatglm3_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]) -> None:
    src = copy_checkpoint(chatglm3_dir, tmp_path / "src", torch_dtype="float16")
    state = {n: t.half() for n, t in load_file(src / "model.safetensors").items()}
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    convert_weights(src, tmp_path / "dst", stop_token_ids=STOP)
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["dtype"] == "float16"
    converted = _tensors(tmp_path / "dst")
    assert all(torch.equal(converted[n], reference[n].half()) for n in reference)
    assert GlmForCausalLM.from_pretrained(tmp_path / "dst").dtype == torch.float16  # dtype "auto" reads it


def test_one_input_shard_is_alive_at_a_time(
    chatglm3_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bounded memory by design, checked: each tensor read is watched through a weak reference; when a
    # shard starts being read, no tensor of an earlier shard (nor anything converted from one: q/k/v
    # are clones, the rest the tensors themselves, written and dropped) may still be alive.
    src = _sharded(chatglm3_dir, tmp_path / "src", shards=3)
    read = weights.read_shard
    watched: list[tuple[str, weakref.ref[torch.Tensor]]] = []

    def watching(shard: Any) -> Iterator[tuple[str, torch.Tensor]]:
        gc.collect()
        alive = [name for name, ref in watched if ref() is not None]
        assert not alive, f"{shard.path.name} is read while {alive} of an earlier shard is alive"
        for name, tensor in read(shard):
            watched.append((name, weakref.ref(tensor)))
            yield name, tensor

    monkeypatch.setattr(weights, "read_shard", watching)
    convert_weights(src, tmp_path / "dst", stop_token_ids=STOP)
    assert len(watched) == 18


@pytest.mark.parametrize(
    ("damage", "names"),
    [
        ("missing", [LAYER1 + "self_attention.query_key_value.weight"]),
        ("shape", ["model-00002-of-00002.safetensors", LAYER1 + "mlp.dense_h_to_4h.weight", "[256, 63]"]),
        ("unknown", ["model-00002-of-00002.safetensors", "transformer.prefix_encoder.embedding.weight"]),
        ("truncated", ["model-00001-of-00002.safetensors", "truncated"]),
        ("truncated-bin", ["pytorch_model-00001-of-00002.bin", "truncated"]),
        ("index", ["model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing"]),
        ("mixed-dtypes", ["transformer.encoder.layers", "float16", "float32"]),
    ],
)
def test_bad_weights_are_refused_and_nothing_is_written(
    chatglm3_dir: Path, tmp_path: Path, damage: str, names: list[str]
) -> None:
    src = _sharded(
        chatglm3_dir, tmp_path / "src", shards=2, fmt="bin" if damage == "truncated-bin" else "safetensors"
    )
    second = src / "model-00002-of-00002.safetensors"
    if damage in ("missing", "shape", "unknown", "mixed-dtypes"):
        state = load_file(second)
        index_path = src / "model.safetensors.index.json"
        index = json.loads(index_path.read_text())
        if damage == "missing":
            del state[names[0]]
            del index["weight_map"][names[0]]
        elif damage == "shape":
            state[names[1]] = state[names[1]][:, :63].contiguous()
        elif damage == "unknown":
            state[names[1]] = torch.zeros(4, 4)
            index["weight_map"][names[1]] = second.name
        else:
            state = {n: t.half() if "layers" in n else t for n, t in state.items()}
        save_file(state, second)
        index_path.write_text(json.dumps(index))
    elif damage.startswith("truncated"):
        first = next(p for p in sorted(src.iterdir()) if p.name.endswith((".safetensors", ".bin")))
        first.write_bytes(first.read_bytes()[:-1000])
    elif damage == "index":
        second.unlink()
    dst = tmp_path / "dst"
    with pytest.raises(CheckpointError) as error:
        convert_weights(src, dst, stop_token_ids=STOP)
    for name in names:
        assert name in str(error.value)
    assert not dst.exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rmsnorm", False),
        ("add_bias_linear", True),
        ("apply_residual_connection_post_layernorm", True),
        ("post_layer_norm", False),
        ("original_rope", False),
        ("pre_seq_len", 128),
        ("prefix_projection", True),
        ("quantization_bit", 4),
        ("fp32_residual_connection", True),
        ("hidden_dropout", 0.1),
        ("model_type", "chatglm2"),
        ("interleaved_qkv", False),  # a key the import does not know
        ("num_attention_heads", 3),  # not a multiple of multi_query_group_num (2)
        ("kv_channels", None),  # removed
    ],
)
def test_unsupported_configs_are_refused_naming_the_key(
    chatglm3_dir: Path, tmp_path: Path, key: str, value: Any
) -> None:
    src = copy_checkpoint(chatglm3_dir, tmp_path / "src", **{key: value})
    dst = tmp_path / "dst"
    with pytest.raises(CheckpointError) as error:
        convert_weights(src, dst, stop_token_ids=STOP)
    assert "config.json" in str(error.value) and key in str(error.value)
    assert not dst.exists()


@pytest.mark.parametrize("code", ["chatglm3-6b", "interpolation", "absent"])
def test_rope_ratio_needs_code_that_scales_the_base(chatglm3_dir: Path, tmp_path: Path, code: str) -> None:
    # rope_ratio scales the base in ChatGLM3-32k/GLM-4, divides positions in ChatGLM2-32k and does nothing
    # in chatglm3-6b's code: only the first is imported (test_glm_import_exact checks it exactly).
    src = copy_checkpoint(chatglm3_dir, tmp_path / "src", rope_ratio=16)
    modeling = src / "modeling_chatglm.py"
    if code == "interpolation":
        use_rope_ratio_code(src)
        text = modeling.read_text().replace("base = base * self.rope_ratio", "pass")  # ChatGLM2-6B-32k's:
        seq_idx = "seq_idx = torch.arange(seq_len, dtype=torch.float, device=device)"
        modeling.write_text(text.replace(seq_idx, seq_idx + " / self.rope_ratio"))
    elif code == "absent":
        modeling.unlink()
    with pytest.raises(CheckpointError) as error:
        convert_weights(src, tmp_path / "dst", stop_token_ids=STOP)
    assert "rope_ratio" in str(error.value)
    assert ("config.json" if code == "absent" else "modeling_chatglm.py") in str(error.value)
    assert not (tmp_path / "dst").exists()


def test_an_existing_folder_keeps_its_files_and_gets_none_on_failure(
    chatglm3_dir: Path, tmp_path: Path
) -> None:
    # The importer converts into its staging folder, which already holds the tokenizer.
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "tokenizer.json").write_text("{}")
    broken = _sharded(chatglm3_dir, tmp_path / "broken", shards=2)
    (broken / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match=re.escape("model-00002-of-00002.safetensors")):
        convert_weights(broken, staging, stop_token_ids=STOP)
    assert sorted(p.name for p in staging.iterdir()) == ["tokenizer.json"]

    convert_weights(chatglm3_dir, staging, stop_token_ids=STOP)
    assert sorted(p.name for p in staging.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    with pytest.raises(CheckpointError, match=re.escape("already holds config.json")):
        convert_weights(chatglm3_dir, staging, stop_token_ids=STOP)


def test_round_trip_through_thudm_layout(
    chatglm3_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    imported = tmp_path / "imported"
    convert_weights(chatglm3_dir, imported, stop_token_ids=STOP)
    model = GlmForCausalLM.from_pretrained(imported, dtype=torch.float32)
    write_chatglm3_layout(
        model,
        json.loads((imported / "config.json").read_text()),
        tmp_path / "thudm",
        name_or_path="tiny-chatglm3",
    )

    # THUDM's layout exactly: the fixture's tensors bit for bit (inv_freq included) and config.json's keys
    original = load_file(chatglm3_dir / "model.safetensors")
    written = load_file(tmp_path / "thudm" / "model.safetensors")
    assert written.keys() == original.keys()
    assert all(torch.equal(written[n], original[n]) for n in original)
    fixture_config = json.loads((chatglm3_dir / "config.json").read_text())
    assert json.loads((tmp_path / "thudm" / "config.json").read_text()) == fixture_config

    convert_weights(tmp_path / "thudm", tmp_path / "again", stop_token_ids=STOP)
    again = _tensors(tmp_path / "again")
    assert again.keys() == reference.keys() and all(torch.equal(again[n], reference[n]) for n in reference)
    with safe_open(tmp_path / "thudm" / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_layout_refuses_what_chatglm3_cannot_hold(
    chatglm3_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    config = json.loads((chatglm3_dir / "config.json").read_text())
    glm, _ = weights.glm_config(config, stop_token_ids=STOP)
    extra = dict(reference, **{"model.layers.0.self_attn.o_proj.bias": torch.zeros(64)})
    with pytest.raises(CheckpointError, match=re.escape("o_proj.bias")):
        write_chatglm3_layout(extra, glm, tmp_path / "a")
    missing = {n: t for n, t in reference.items() if n != "model.norm.weight"}
    with pytest.raises(CheckpointError, match=re.escape("model.norm.weight")):
        write_chatglm3_layout(missing, glm, tmp_path / "b")
    neox = dict(
        glm, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}
    )
    with pytest.raises(CheckpointError, match="partial_rotary_factor"):
        write_chatglm3_layout(reference, neox, tmp_path / "c")
