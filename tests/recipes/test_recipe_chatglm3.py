"""The seed's model, ChatGLM3, in the LoRA recipe: imported as transformers' `glm`, held against THUDM's code.

The fixture is THUDM's chatglm3-6b layout with tiny sizes and THUDM's remote code (chatglm3_dir);
`chatglm3_model` is it imported. References: finetune_hf.py's `process_batch` (chatglm3helpers) on
THUDM's tokenizer, THUDM's model for the loss, and PEFT's LoRA on its fused `query_key_value`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatglm3helpers import import_chatglm3, process_batch, randomized_copy, thudm_model, thudm_tokenizer
from recipehelpers import LORA_YAML, write_jsonl
from tunelab.recipes import advertisegen_sample
from tunelab.recipes.lora.batching import PaddedLayout
from tunelab.recipes.lora.config import PeftSettings, load_config
from tunelab.recipes.lora.data import IGNORE_INDEX, ChatFormat, chat_format, tokenize_file
from tunelab.recipes.lora.errors import ModelError
from tunelab.recipes.lora.loss import loss_sum
from tunelab.recipes.lora.metrics import MemoryMetrics
from tunelab.recipes.lora.model import apply_lora
from tunelab.recipes.lora.recipe import LoRAFinetuneRecipe

Run = Callable[..., tuple[int, list[dict[str, Any]]]]
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

# r x (hidden + q + k + v) per layer, as PEFT's LoRA on ChatGLM3's query_key_value: 8 x (64 + 64 + 32 + 32)
QKV_LORA_PARAMS = 8 * (64 + 64 + 32 + 32) * 2
QKV = ("q_proj", "k_proj", "v_proj")
CONVERSATIONS = [
    [
        {"role": "user", "content": "类型#上衣*颜色#白色"},
        {"role": "assistant", "content": "这件白色上衣很百搭"},
    ],
    [
        {"role": "system", "content": "你是一个广告文案助手"},
        {"role": "user", "content": "类型#裙*裙长#连衣裙"},
        {"role": "assistant", "content": "这款连衣裙\n收腰设计"},
        {"role": "user", "content": "再短一点 please <|assistant|> [gMASK]"},  # text, not tokens
        {"role": "assistant", "content": "  收腰连衣裙, 显瘦  "},
    ],
    [
        {"role": "user", "content": "第一问"},
        {"role": "assistant", "content": "第一答"},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "第二答 a  b\n\n"},
    ],
]


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == name]


def rows(conversations: list[list[dict[str, Any]]]) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(f"c{i}", [dict(m, loss=m.get("loss", True)) for m in c]) for i, c in enumerate(conversations)]


@pytest.fixture(scope="module")
def tokenizer(chatglm3_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(chatglm3_model)


@pytest.fixture(scope="module")
def ad_samples(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    records = [advertisegen_sample.to_conversations(r) for r in advertisegen_sample.generate(6, seed=2)]
    path = write_jsonl(tmp_path_factory.mktemp("glm-data") / "train.json", records)
    return tokenize_file(path, tokenizer, chat_format(tokenizer), 64, 96).samples


def lora_glm(path: Path, **settings: Any) -> Any:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path)
    return apply_lora(model, PeftSettings(**{"r": 8, "lora_alpha": 32, **settings}))


# ------------------------------------------------------------------ the chat format
def test_chat_format_equals_finetune_hf_process_batch(tokenizer: Any, chatglm3_dir: Path) -> None:
    """Multi-turn, a system prompt, newlines and spaces in the content: the same ids and labels."""
    fmt = chat_format(tokenizer)
    assert fmt.name == "chatglm3"
    expected_ids, expected_labels = process_batch(thudm_tokenizer(chatglm3_dir), CONVERSATIONS, 4096, 4096)
    encoded = fmt.encode(rows(CONVERSATIONS))
    assert [e.ids for e in encoded] == expected_ids
    assert [e.labels for e in encoded] == expected_labels
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    for e, conversation in zip(encoded, CONVERSATIONS, strict=True):
        assert e.ids[e.answer_start - 1] == assistant and e.ids[-1] == tokenizer.eos_token_id == 2
        assert e.labels[e.answer_start - 1] == IGNORE_INDEX  # the role token is not trained ...
        assert e.labels[e.answer_start :] == e.ids[e.answer_start :]  # ... "\n", the answer and </s> are
        assert e.answer == conversation[-1]["content"]


def test_chat_format_samples_loss_false_and_truncation(tokenizer: Any, tmp_path: Path) -> None:
    turns: list[dict[str, Any]] = [dict(m) for m in CONVERSATIONS[2]]
    turns[1]["loss"] = False
    long = [{"role": "user", "content": "类型#上衣*" * 200}, {"role": "assistant", "content": "答案很短"}]
    path = write_jsonl(tmp_path / "train.json", [{"conversations": turns}, {"conversations": long}])
    result = tokenize_file(path, tokenizer, chat_format(tokenizer), 24, 24)
    skipped, cut = result.samples
    newline, answer = tokenizer(["\n", "第二答 a  b\n\n"], add_special_tokens=False).input_ids
    assert [t for t in skipped.labels if t != IGNORE_INDEX] == [*newline, *answer, 2]  # nothing of turn 1
    assert result.truncated_prompts == 1 and len(cut.input_ids) == 24 + 24 + 1
    assert cut.input_ids[:2] == tokenizer.convert_tokens_to_ids(["[gMASK]", "sop"])  # the head survives
    assert cut.input_ids[cut.prompt_len - 1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert tokenizer.decode(cut.input_ids[cut.prompt_len :], skip_special_tokens=True).strip() == "答案很短"
    assert cut.labels[-1] == 2 and cut.answer == "答案很短"


def test_chat_format_choice_and_the_fallback_template_without_eos_token(
    tiny_model: Path, chatglm3_dir: Path
) -> None:
    assert load_config(LORA_YAML, ["tunelab.chat_template=chatglm3"]).tunelab.chat_template == "chatglm3"
    with pytest.raises(ModelError, match=r"lacks \[gMASK\], sop, <\|user\|>, <\|assistant\|>; use auto"):
        chat_format(AutoTokenizer.from_pretrained(tiny_model), "chatglm3")
    thudm = thudm_tokenizer(chatglm3_dir)  # ChatGLMTokenizer: templates get no eos_token from it
    fallback = ChatFormat(thudm, "fallback")
    text = fallback.render(rows(CONVERSATIONS[:1])[0][1], add_generation_prompt=False)
    assert text.endswith("<|assistant|>\n这件白色上衣很百搭</s>\n")


# ------------------------------------------------------------------ LoRA as on query_key_value
@pytest.mark.parametrize("targets", [None, ["query_key_value"]])
def test_lora_shares_lora_A_like_query_key_value(
    chatglm3_model: Path, targets: list[str] | None, tmp_path: Path
) -> None:
    model = lora_glm(chatglm3_model, target_modules=targets)
    params = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == QKV_LORA_PARAMS
    assert len({id(p) for p in params}) == len(params) == 2 * 4  # per layer: one A, three B
    attention = model.base_model.model.model.layers[0].self_attn
    shared = attention.q_proj.lora_A["default"].weight
    assert attention.k_proj.lora_A["default"].weight is shared is attention.v_proj.lora_A["default"].weight
    assert [n for n, p in model.named_parameters() if p.requires_grad and "layers.0." in n] == [
        f"base_model.model.model.layers.0.self_attn.{m}.lora_{ab}.default.weight"
        for m, ab in [("q_proj", "A"), ("q_proj", "B"), ("k_proj", "B"), ("v_proj", "B")]
    ]
    model.save_pretrained(tmp_path)  # safetensors refuses shared tensors: PEFT writes copies
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    q, k, v = (saved[f"base_model.model.model.layers.1.self_attn.{m}.lora_A.weight"] for m in QKV)
    assert torch.equal(q, k) and torch.equal(q, v)


def test_chatglm3_module_names_map_to_the_imported_model(chatglm3_model: Path) -> None:
    model = lora_glm(chatglm3_model, target_modules=["dense", "dense_h_to_4h", "dense_4h_to_h"])
    trained = {n.split(".")[-4] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"o_proj", "gate_up_proj", "down_proj"}
    separate = lora_glm(chatglm3_model, target_modules=["q_proj", "k_proj", "v_proj"])  # asked for: own A's
    assert sum(p.numel() for p in separate.parameters() if p.requires_grad) == 8 * (3 * 64 + 64 + 32 + 32) * 2


def test_loss_equals_thudm_model_with_lora_on_query_key_value(
    chatglm3_dir: Path, ad_samples: list[Any], tmp_path: Path
) -> None:
    """The imported model + shared-A LoRA vs THUDM's model with that LoRA folded into query_key_value,
    on a copy of the fixture with random norms and q/k/v biases (the fixture's are ones and zeros)."""
    original = randomized_copy(chatglm3_dir, tmp_path / "thudm")
    model = lora_glm(import_chatglm3(original, tmp_path / "imported")).eval()
    thudm = thudm_model(original)
    batch = PaddedLayout(len(ad_samples), 0).collate(ad_samples, [[i] for i in range(len(ad_samples))])
    for with_lora in (False, True):
        if with_lora:  # B starts at zero; give the adapter something to do, and fold it into THUDM's
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, std=0.2)
            for i, layer in enumerate(model.base_model.model.model.layers):
                attn = layer.self_attn
                a = attn.q_proj.lora_A["default"].weight
                b = torch.cat([getattr(attn, m).lora_B["default"].weight for m in QKV])
                qkv = thudm.transformer.encoder.layers[i].self_attention.query_key_value
                qkv.weight.data += (32 / 8) * b @ a
        with torch.no_grad():
            ours = float(loss_sum(model, batch)) / batch.num_label_tokens
            total, count = 0.0, 0
            for s in ad_samples:
                logits = thudm(input_ids=torch.tensor([s.input_ids]), use_cache=False).logits[0, :-1].float()
                labels = torch.tensor(s.labels[1:])
                total += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
                count += int((labels != IGNORE_INDEX).sum())
        assert count == batch.num_label_tokens
        assert ours == pytest.approx(total / count, abs=1e-4), with_lora


# ------------------------------------------------------------------ the recipe end to end
SHORT = [
    "training_args.max_steps=8",
    "training_args.learning_rate=2e-2",
    "training_args.logging_steps=1",
    "training_args.save_steps=4",
    "training_args.eval_strategy=no",
    "data_config.test_file=null",
]


@pytest.mark.parametrize("profile", ["auto", "standard", "fast", "low_memory"])
def test_lora_yaml_trains_the_imported_model_under_every_profile(
    run_recipe: Run, data_dir: Path, chatglm3_model: Path, tmp_path: Path, profile: str
) -> None:
    """On a CPU: auto is standard (padded); fast and low_memory pack with varlen attention (the CPU
    reference), low_memory recomputes activations; no profile compiles on a CPU (see the compile test)."""
    code, records = run_recipe(
        data_dir, tmp_path / "out", *SHORT, f"tunelab.profile={profile}", model=chatglm3_model
    )
    assert code == 0, records[-1:]
    start = events(records, "start")[0]
    assert start["chat_format"] == "chatglm3" and start["trainable_params"] == QKV_LORA_PARAMS
    packed = profile in ("fast", "low_memory")
    assert start["packing"] == ("packed/varlen" if packed else "padded")
    assert start["gradient_checkpointing"] is (profile == "low_memory") and start["compile"] is False
    losses = [r["loss"] for r in events(records, "train")]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2]) - 0.2, losses


def test_packed_samples_keep_their_loss_on_glm(chatglm3_model: Path, ad_samples: list[Any]) -> None:
    import contextlib

    from tunelab.recipes.lora.attention import choose_packing_mode
    from tunelab.recipes.lora.batching import PackedLayout

    model = AutoModelForCausalLM.from_pretrained(chatglm3_model).eval()
    assert choose_packing_mode(model, torch.device("cpu"), contextlib.nullcontext, "varlen") == "varlen"
    padded = PaddedLayout(len(ad_samples), 0).collate(ad_samples, [[i] for i in range(len(ad_samples))])
    layout = PackedLayout(1, 1024, 0, "varlen", segment_cap=161)
    [plan] = layout.plan(ad_samples, range(len(ad_samples)))
    packed = layout.collate(ad_samples, plan)
    assert packed.num_samples == len(ad_samples) and packed.num_label_tokens == padded.num_label_tokens
    with torch.no_grad():
        assert float(loss_sum(model, packed)) == pytest.approx(float(loss_sum(model, padded)), rel=1e-5)


RUN = [*SHORT, "training_args.max_steps=6", "training_args.save_steps=3", "tunelab.profile=fast"]


@pytest.fixture(scope="module")
def trained(
    chatglm3_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LoRAFinetuneRecipe, MemoryMetrics]:
    """lora.yaml for 6 steps (packed, checkpoints every 3), the recipe object kept for its model."""
    root = tmp_path_factory.mktemp("glm-run")
    records = [advertisegen_sample.to_conversations(r) for r in advertisegen_sample.generate(8, seed=0)]
    write_jsonl(root / "data" / "train.json", records * 3)
    write_jsonl(root / "data" / "dev.json", records[:5])
    evaluate = ["training_args.eval_strategy=steps", "training_args.eval_steps=6"]
    evaluate += ["training_args.generation_config.max_new_tokens=8"]
    cfg = load_config(LORA_YAML, [*RUN, *evaluate, f"training_args.output_dir={root / 'out'}"])
    metrics = MemoryMetrics()
    recipe = LoRAFinetuneRecipe(cfg, root / "data", chatglm3_model, "no", metrics)
    recipe.setup()
    recipe.train()
    return recipe, metrics


def test_saved_adapter_loads_with_plain_peft_and_gives_the_trained_logits(
    trained: tuple[LoRAFinetuneRecipe, MemoryMetrics], chatglm3_model: Path
) -> None:
    from peft import PeftModel

    recipe, _ = trained
    config = json.loads((recipe.output_dir / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "q_proj", "v_proj"] and config["r"] == 8
    ids = torch.tensor([recipe.data["train"].samples[0].input_ids])
    recipe.model.eval()
    with torch.no_grad():
        expected = recipe.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(chatglm3_model)
        before = base(input_ids=ids).logits
        loaded = PeftModel.from_pretrained(base, recipe.output_dir)(input_ids=ids).logits
    assert not torch.allclose(expected, before, atol=1e-3)
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-5)


def test_eval_generates_from_the_assistant_token_and_stops_at_chatglm3s_stop_ids(
    trained: tuple[LoRAFinetuneRecipe, MemoryMetrics],
) -> None:
    recipe, metrics = trained
    [evaluation] = events(metrics.records, "eval")
    assert (evaluation["step"], evaluation["samples"], evaluation["generated"]) == (6, 5, 5)
    stops = recipe._generation()["generation_config"].eos_token_id
    assert set(recipe.tokenizer.convert_tokens_to_ids(["</s>", "<|user|>", "<|observation|>"])) <= set(stops)
    sample = recipe.data["validation"].samples[0]
    assert sample.input_ids[sample.prompt_len - 1] == recipe.tokenizer.convert_tokens_to_ids("<|assistant|>")


def test_resume_keeps_lora_A_shared_and_continues_the_run(
    trained: tuple[LoRAFinetuneRecipe, MemoryMetrics], chatglm3_model: Path, tmp_path: Path
) -> None:
    first, first_metrics = trained
    shutil.copytree(first.output_dir, tmp_path / "out")
    cfg = load_config(LORA_YAML, [*RUN, f"training_args.output_dir={tmp_path / 'out'}"])
    metrics = MemoryMetrics()
    recipe = LoRAFinetuneRecipe(cfg, first.data_dir, chatglm3_model, 3, metrics)
    recipe.setup()
    assert recipe.step == 3
    attention = recipe.model.base_model.model.model.layers[1].self_attn
    shared = attention.q_proj.lora_A["default"].weight
    assert attention.k_proj.lora_A["default"].weight is shared is attention.v_proj.lora_A["default"].weight
    assert any(p is shared for group in recipe.optimizer.param_groups for p in group["params"])
    recipe.train()
    before = {r["step"]: r["loss"] for r in events(first_metrics.records, "train")}
    again = {r["step"]: r["loss"] for r in events(metrics.records, "train")}
    assert again.keys() == {4, 5, 6}
    assert [again[s] for s in (4, 5, 6)] == pytest.approx([before[s] for s in (4, 5, 6)], rel=1e-5)


@pytest.mark.slow
def test_compiled_layers_with_shared_lora_A_match_eager(chatglm3_model: Path, ad_samples: list[Any]) -> None:
    from tunelab.recipes.lora.attention import NAME, use_attention
    from tunelab.recipes.lora.batching import PackedLayout
    from tunelab.recipes.lora.speed import compile_layers

    layout = PackedLayout(1, 1024, 0, "varlen", segment_cap=161)
    batch = layout.collate(ad_samples, layout.plan(ad_samples, range(len(ad_samples)))[0])
    results = []
    for compiled in (False, True):
        model = lora_glm(chatglm3_model)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
        use_attention(model, NAME)
        if compiled:
            torch._dynamo.reset()
            assert compile_layers(model, backend="aot_eager") == 2
        model.train()
        value = loss_sum(model, batch)
        value.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((float(value.detach()), grads))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert len(results[0][1]) == len(results[1][1]) == 8
    for eager_grad, compiled_grad in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ THUDM's layout as MODEL_DIR
@pytest.mark.parametrize("trust", [False, True])
def test_thudm_layout_fails_with_how_to_import_it(
    data_dir: Path, chatglm3_dir: Path, tmp_path: Path, trust: bool
) -> None:
    metrics = tmp_path / "metrics.jsonl"
    argv = [sys.executable, "-m", "tunelab.recipes.lora", str(data_dir), str(chatglm3_dir), str(LORA_YAML)]
    argv += ["--metrics-file", str(metrics), "--set", f"training_args.output_dir={tmp_path / 'out'}"]
    argv += ["--set", f"tunelab.trust_remote_code={str(trust).lower()}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    [failed] = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert failed["event"] == "failed" and failed["step"] == 0
    reason = failed["reason"]
    assert "is ChatGLM3 in THUDM's original layout, whose model code needs transformers 4.3x" in reason
    assert "`tunelab model import NAME --from DATASET`" in reason and "train the imported version" in reason
    assert ("cannot load" in reason) is trust  # trusted: it was tried, and the reason says why it failed
