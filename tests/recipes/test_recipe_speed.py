"""The recipe's fast paths: varlen packing, the chunked loss, compiled layers and the speed profiles.

The GPU kernel itself runs only on a GPU (bench/train measures it); here the same code paths run
with the CPU reference of varlen attention, which is exact.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recipehelpers import LORA_YAML, write_jsonl
from tunelab.recipes import advertisegen_sample
from tunelab.recipes.lora import loss as loss_module
from tunelab.recipes.lora.attention import NAME, choose_packing_mode, use_attention
from tunelab.recipes.lora.batching import BatchStream, PackedLayout, PaddedLayout, Prefetcher
from tunelab.recipes.lora.config import PeftSettings, load_config
from tunelab.recipes.lora.data import IGNORE_INDEX, ChatFormat, Sample, tokenize_file
from tunelab.recipes.lora.loss import forward_logits, loss_sum
from tunelab.recipes.lora.model import apply_lora, enable_checkpointing
from tunelab.recipes.lora.speed import compile_layers, plan_speed
from tunelab.recipes.tinymodel import build_tiny_model

Run = Callable[..., tuple[int, list[dict[str, Any]]]]


@pytest.fixture(scope="module")
def samples(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    records = [advertisegen_sample.to_conversations(r) for r in advertisegen_sample.generate(24, seed=5)]
    path = write_jsonl(tmp_path_factory.mktemp("speed") / "train.json", records)
    return tokenize_file(path, tokenizer, ChatFormat(tokenizer), 64, 96).samples


def lora_model(path: Path, dropout: float = 0.0) -> Any:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path)
    return apply_lora(model, PeftSettings(r=8, lora_alpha=32, lora_dropout=dropout))


def test_varlen_batches_are_one_row_with_sample_offsets(samples: list[Sample]) -> None:
    layout = PackedLayout(batch_size=2, pack_length=300, pad_id=0, mode="varlen", segment_cap=161)
    plan = layout.plan(samples, range(len(samples)))[0]
    batch = layout.collate(samples, plan)
    assert batch.input_ids.shape == (1, 600) and batch.attention_mask is None
    cu = batch.cu_seqlens.tolist()
    assert cu[0] == 0 and cu[-1] == 600 and batch.max_seqlen == 161
    assert all(0 < b - a <= 161 for a, b in itertools.pairwise(cu))  # tails split too
    starts = set(cu[:-1])
    at = 0
    for r, row in enumerate(plan):
        at = r * 300
        for i in row:
            assert at in starts and batch.position_ids[0, at] == 0
            assert batch.input_ids[0, at : at + len(samples[i].input_ids)].tolist() == samples[i].input_ids
            at += len(samples[i].input_ids)
    # where the loss is: every trained target, predicted from the token before it
    flat = batch.labels[0]
    assert torch.equal(flat[batch.loss_index + 1], batch.loss_targets)
    assert batch.num_label_tokens == int((flat[1:] != IGNORE_INDEX).sum()) == len(batch.loss_targets)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "glm"])
def test_varlen_attention_keeps_packed_samples_apart(
    kind: str,
    tiny_model: Path,
    samples: list[Sample],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> None:
    path = tiny_model
    if kind == "glm":  # ChatGLM3 imported: its vocabulary holds the tiny Llama tokenizer's ids
        path = request.getfixturevalue("chatglm3_model")
    elif kind != "llama":
        path = build_tiny_model(tmp_path_factory.mktemp(kind) / kind, advertisegen_sample.corpus(100), kind)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert choose_packing_mode(model, torch.device("cpu"), contextlib.nullcontext, "varlen") == "varlen"
    assert model.config._attn_implementation == NAME
    layout = PackedLayout(batch_size=2, pack_length=330, pad_id=0, mode="varlen", segment_cap=161)
    plan = layout.plan(samples, range(len(samples)))[0]
    batch = layout.collate(samples, plan)
    with torch.no_grad():
        logits = forward_logits(model, batch)[0]
        for r, row in enumerate(plan):
            at = r * 330
            for i in row:
                n = len(samples[i].input_ids)
                alone = forward_logits(model, PaddedLayout(1, 0).collate(samples, [[i]]))[0]
                torch.testing.assert_close(logits[at : at + n], alone, atol=2e-5, rtol=1e-4)
                at += n
        # unpacked calls (evaluation, generation) still get ordinary masked SDPA
        padded = PaddedLayout(3, 0).collate(samples, [[0], [1], [2]])
        use_attention(model, "sdpa")
        expected = forward_logits(model, padded)
        use_attention(model, NAME)
        torch.testing.assert_close(forward_logits(model, padded), expected)


@pytest.mark.parametrize("chunk_elements", [1 << 26, 3000])  # one chunk; several chunks of 2-3 tokens
def test_chunked_loss_equals_full_logits_cross_entropy(
    tiny_model: Path, samples: list[Sample], chunk_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", chunk_elements)
    batch = PackedLayout(2, 256, 0).collate(samples, PackedLayout(2, 256, 0).plan(samples, range(8))[0])
    results = []
    for chunked in (True, False):
        model = lora_model(tiny_model)
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the gradient of A something to flow through
                torch.nn.init.normal_(param, std=0.1)
        if not chunked:
            monkeypatch.setattr(loss_module, "output_head", lambda model: None)
        assert (loss_module.output_head(model) is not None) == chunked
        value = loss_sum(model, batch)
        value.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((value.detach(), grads))
    (chunked_loss, chunked_grads), (full_loss, full_grads) = results
    torch.testing.assert_close(chunked_loss, full_loss, rtol=1e-5, atol=1e-4)
    assert chunked_grads.keys() == full_grads.keys() and len(chunked_grads) == 8
    for name, grad in chunked_grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_layers_match_eager_and_compile_once(
    tiny_model: Path, samples: list[Sample], checkpointing: bool
) -> None:
    """One compiled graph serves every layer and every batch, whatever its number of samples."""
    layout = PackedLayout(1, 400, 0, "varlen", segment_cap=161)
    batches = [b for _, (_, b) in zip(range(3), BatchStream(samples, layout, 0).iterate(), strict=False)]
    assert len({len(b.cu_seqlens) for b in batches}) > 1
    results = []
    for compiled in (False, True):
        model = lora_model(tiny_model)
        use_attention(model, NAME)
        if checkpointing:
            enable_checkpointing(model)
        if compiled:
            torch._dynamo.reset()
            assert compile_layers(model, backend="aot_eager") == 2
        model.train()
        losses = []
        for i, batch in enumerate(batches):
            with torch._dynamo.config.patch(error_on_recompile=i > 0):
                value = loss_sum(model, batch)
                value.backward()
            losses.append(float(value.detach()))
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((losses, grads))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for eager_grad, compiled_grad in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)


def test_profiles_resolve_from_device_and_memory() -> None:
    cfg = load_config(LORA_YAML)
    glm = type("Config", (), {"hidden_size": 4096, "intermediate_size": 13696, "num_hidden_layers": 28})()
    cpu, gpu = torch.device("cpu"), torch.device("cuda")

    standard = plan_speed(cfg, cpu, glm, None)
    assert (standard.profile, standard.packing, standard.compile, standard.checkpointing) == (
        "standard",
        False,
        False,
        False,
    )
    fast = plan_speed(cfg, gpu, glm, 66 * 2**30)  # an 80 GB card after loading a 6B model in bf16
    assert (fast.profile, fast.packing, fast.rows, fast.compile, fast.checkpointing) == (
        "fast",
        True,
        1,
        True,
        False,
    )
    assert fast.pack_length % 1024 == 0 and 8192 <= fast.pack_length <= 16384
    small = plan_speed(cfg, gpu, glm, 10 * 2**30)  # a 24 GB card
    assert (small.profile, small.checkpointing, small.pack_length) == ("low_memory", True, 8192)

    explicit = load_config(
        LORA_YAML,
        [
            "tunelab.profile=fast",
            "tunelab.pack_length=2048",
            "tunelab.compile=false",
            "training_args.gradient_checkpointing=true",
        ],
    )
    chosen = plan_speed(explicit, gpu, glm, 66 * 2**30)
    assert (chosen.rows, chosen.pack_length, chosen.compile, chosen.checkpointing) == (4, 2048, False, True)
    with pytest.raises(Exception, match=r"tunelab\.profile.*use one of"):
        load_config(LORA_YAML, ["tunelab.profile=turbo"])


def test_fast_profile_is_the_sum_of_its_settings(run_recipe: Run, data_dir: Path, tmp_path: Path) -> None:
    common = ["training_args.max_steps=4", "training_args.logging_steps=1", "training_args.eval_strategy=no"]
    common += ["data_config.test_file=null", "training_args.learning_rate=5e-3"]
    code, fast = run_recipe(
        data_dir, tmp_path / "fast", *common, "tunelab.profile=fast", "tunelab.packing_mode=varlen"
    )
    assert code == 0
    start = next(r for r in fast if r["event"] == "start")
    assert start["profile"] == "fast" and start["packing"] == "packed/varlen"
    assert start["micro_batch_tokens"] == 16384 and start["compile"] is False  # no compiling on a CPU
    assert start["samples_per_step"] == 48  # the whole (small) train set fits one packed row
    code, explicit = run_recipe(
        data_dir,
        tmp_path / "explicit",
        *common,
        "tunelab.profile=standard",
        "tunelab.packing=true",
        "tunelab.packing_mode=varlen",
        "tunelab.pack_length=16384",
        "training_args.per_device_train_batch_size=1",
    )
    assert code == 0
    losses = [[r["loss"] for r in records if r["event"] == "train"] for records in (fast, explicit)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert all(r["tokens"] > 0 and r["window_seconds"] > 0 for r in fast if r["event"] == "train")


def test_prefetcher_hands_over_batches_and_errors_and_stops() -> None:
    def items() -> Iterator[tuple[float, Any]]:
        yield 0.5, "a"
        yield 1.0, "b"
        raise RuntimeError("bad line 3")

    fetched = Prefetcher(items())  # type: ignore[arg-type]
    assert next(fetched) == (0.5, "a") and next(fetched) == (1.0, "b")
    with pytest.raises(RuntimeError, match="bad line 3"):
        next(fetched)

    endless = Prefetcher(((float(i), i) for i in itertools.count()), depth=1)  # type: ignore[misc]
    assert next(endless) == (0.0, 0) and next(endless) == (1.0, 1)
    endless.close()
    assert not endless._thread.is_alive()


def test_lora_dropout_masks_survive_recompute(tiny_model: Path, samples: list[Sample]) -> None:
    """Checkpointed layers recompute the same dropout masks: gradients equal those without checkpointing."""
    layout = PackedLayout(1, 400, 0, "varlen", segment_cap=161)
    batch = layout.collate(samples, layout.plan(samples, range(len(samples)))[0])
    grads = []
    for checkpointing in (False, True):
        model = lora_model(tiny_model, dropout=0.1)
        use_attention(model, NAME)
        if checkpointing:
            enable_checkpointing(model)
        model.train()
        torch.manual_seed(7)
        loss_sum(model, batch).backward()
        grads.append([copy.deepcopy(p.grad) for p in model.parameters() if p.grad is not None])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain)


@pytest.mark.parametrize("torch_api", ["2.10", "2.11", "2.13"])
def test_gpu_kernel_call_fits_each_pytorch_signature(torch_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The call into torch.nn.attention.varlen adapts to its version: the causal flag and GQA differ."""
    from tunelab.recipes.lora import attention

    calls: list[dict[str, Any]] = []

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs | {"kv_heads": k.shape[1], "max": (max_q, max_k)})
        assert kwargs.get("window_size") == (-1, 0) or kwargs.get("is_causal") is True
        if not kwargs.get("enable_gqa"):
            assert k.shape[1] == q.shape[1]
        k, v = (attention._repeat_heads(t, q.shape[1] // t.shape[1]) for t in (k, v))
        return attention._reference(q, k, v, cu_q, kwargs["scale"])

    causal = {"is_causal": True} if torch_api == "2.10" else {"window_size": (-1, 0)}
    monkeypatch.setattr(attention, "_FLASH", (kernel, causal, torch_api == "2.13"))
    q, k, v = torch.randn(20, 4, 8), torch.randn(20, 2, 8), torch.randn(20, 2, 8)
    cu = torch.tensor([0, 7, 20], dtype=torch.int32)
    out = attention._flash(q, k, v, cu, 13, 0.3)
    torch.testing.assert_close(out, attention._reference(q, k, v, cu, 0.3))
    assert calls[0]["kv_heads"] == (2 if torch_api == "2.13" else 4) and calls[0]["max"] == (13, 13)


def test_a_profile_falls_back_to_padded_batches_where_packing_is_unsafe(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remote model code that ignores restarting positions: the profile pads; packing: true fails."""
    from tunelab.recipes.lora import speed
    from tunelab.recipes.lora.errors import ModelError

    def refuse(*args: Any) -> str:
        raise ModelError("packing would let samples attend to each other on this model")

    monkeypatch.setattr(speed, "choose_packing_mode", refuse)
    glm = type("Config", (), {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2})()
    cfg = load_config(LORA_YAML, ["tunelab.profile=fast"])
    plan = plan_speed(cfg, torch.device("cuda"), glm, 66 * 2**30)
    assert plan.packing and plan.compile
    layout, final = speed.choose_layout(plan, cfg, None, torch.device("cuda"), contextlib.nullcontext, 0)
    assert isinstance(layout, PaddedLayout) and layout.batch_size == 4
    assert not final.packing and not final.compile  # compiling is for the proven varlen path
    explicit = load_config(LORA_YAML, ["tunelab.profile=fast", "tunelab.packing=true"])
    with pytest.raises(ModelError, match="attend to each other"):
        speed.choose_layout(plan, explicit, None, torch.device("cuda"), contextlib.nullcontext, 0)
