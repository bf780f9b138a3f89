"""The recipe end to end on ChatGLM3's lora.yaml (steps shrunk with --set) and on bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from recipehelpers import SHRINK, write_jsonl
from tunelab.recipes import advertisegen_sample
from tunelab.recipes.lora.config import load_config
from tunelab.recipes.lora.errors import StopRequested
from tunelab.recipes.lora.metrics import MemoryMetrics
from tunelab.recipes.lora.recipe import LoRAFinetuneRecipe

Run = Callable[..., tuple[int, list[dict[str, Any]]]]
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == name]


@pytest.fixture(scope="module")
def trained(
    tiny_model: Path, lora_yaml: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Any]]:
    """One run of lora.yaml: 40 steps, checkpoints every 10 (keep 2), eval every 20 on a 5-row dev set."""
    from tunelab.recipes.lora.__main__ import main

    root = tmp_path_factory.mktemp("run")
    records = [advertisegen_sample.to_conversations(r) for r in advertisegen_sample.generate(8, seed=0)]
    write_jsonl(root / "data" / "train.json", records * 6)
    write_jsonl(root / "data" / "dev.json", records[:5])
    argv = [
        str(root / "data"),
        str(tiny_model),
        str(lora_yaml),
        "--metrics-file",
        str(root / "metrics.jsonl"),
    ]
    argv += ["--set", f"training_args.output_dir={root / 'output'}"]
    for item in SHRINK:
        argv += ["--set", item]
    assert main(argv) == 0
    return root / "output", [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]


def test_loss_goes_down(trained: tuple[Path, list[Any]]) -> None:
    _, records = trained
    train = events(records, "train")
    assert [r["step"] for r in train] == list(range(5, 41, 5))
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    last = train[-1]
    assert last["progress"] == 100.0 and last["eta_seconds"] == 0 and last["tokens_per_second"] > 0
    assert {"lr", "grad_norm", "gpu_memory_gb", "epoch"} <= last.keys()
    assert events(records, "start")[0]["packing"] == "padded" and events(records, "done")


def test_eval_works_on_a_dev_set_smaller_than_50_rows(trained: tuple[Path, list[Any]]) -> None:
    _, records = trained
    evals = events(records, "eval")
    assert [(r["split"], r["step"]) for r in evals] == [("validation", 20), ("validation", 40), ("test", 40)]
    for r in evals:
        assert r["samples"] == 5 and r["generated"] == 5
        assert {"loss", "rouge-1", "rouge-2", "rouge-l", "bleu-4"} <= r.keys()
    assert evals[1]["loss"] < evals[0]["loss"]


def test_checkpoints_keep_the_last_two(trained: tuple[Path, list[Any]]) -> None:
    output, records = trained
    assert [r["step"] for r in events(records, "checkpoint")] == [10, 20, 30, 40]
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-30", "checkpoint-40"]
    assert not list(output.glob(".tmp-*")) and not list(output.glob(".trash-*"))
    state = json.loads((output / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["step"] == 40 and state["config"]["training_args"]["max_steps"] == 40


def test_final_adapter_is_servable(trained: tuple[Path, list[Any]], tiny_model: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    output, _ = trained
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama"  # a name, not /tmp/...
    assert config["modules_to_save"] is None and config["r"] == 8 and config["lora_alpha"] == 32
    with safe_open(str(output / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert not [k for k in keys if "embed" in k or "lm_head" in k]
    assert (output / "tokenizer_config.json").exists() and (output / "chat_template.jinja").exists()
    for path in [*output.glob("*.json"), *output.glob("checkpoint-*/*.json")]:
        assert str(tiny_model) not in path.read_text(), path  # nothing points at the local base model dir
    assert not list(output.glob("**/README.md"))

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(ids).logits
    model = PeftModel.from_pretrained(base, output)
    assert not torch.allclose(model(ids).logits, before)  # the adapter changes the model


def test_sigterm_saves_a_checkpoint_and_stops(
    data_dir: Path, tiny_model: Path, lora_yaml: Path, tmp_path: Path
) -> None:
    class SignalAtStep3(MemoryMetrics):
        def emit(self, event: str, **fields: Any) -> None:
            super().emit(event, **fields)
            if event == "train" and fields["step"] == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # as a cancel or a Kueue preemption would

    cfg = load_config(
        lora_yaml, [*SHRINK, "training_args.logging_steps=1", f"training_args.output_dir={tmp_path}"]
    )
    metrics = SignalAtStep3()
    handler = signal.getsignal(signal.SIGTERM)
    recipe = LoRAFinetuneRecipe(cfg, data_dir, tiny_model, "auto", metrics)
    recipe.setup()
    with pytest.raises(StopRequested):
        recipe.train()
    recipe.cleanup()
    assert (tmp_path / "checkpoint-3" / "trainer_state.json").exists()
    assert metrics.records[-1]["event"] == "stopped" and metrics.records[-1]["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == handler  # restored after train()


def test_packing_run(run_recipe: Run, data_dir: Path, tmp_path: Path) -> None:
    overrides = ["training_args.max_steps=6", "tunelab.packing=true", "training_args.eval_strategy=no"]
    overrides += ["data_config.test_file=null", "training_args.per_device_train_batch_size=1"]
    code, records = run_recipe(data_dir, tmp_path / "out", *overrides)
    assert code == 0
    assert events(records, "start")[0]["packing"] == "packed/position_ids"
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_nan_loss_fails_the_run_with_the_reason(
    run_recipe: Run, data_dir: Path, tmp_path: Path, tiny_model: Path
) -> None:
    """Broken weights (one of the causes of NaN losses users report on ChatGLM3) stop the run at step 1."""
    from safetensors.torch import load_file, save_file

    broken = shutil.copytree(tiny_model, tmp_path / "broken-model")
    weights = load_file(broken / "model.safetensors")
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    code, records = run_recipe(data_dir, tmp_path / "out", model=broken)
    assert code == 3
    assert events(records, "failed")[0]["reason"].startswith("the loss became nan at step 1")
    assert not list((tmp_path / "out").glob("checkpoint-*"))
    assert not (tmp_path / "out" / "adapter_config.json").exists()


def test_bad_inputs_fail_fast_with_what_to_change(
    run_recipe: Run, data_dir: Path, tmp_path: Path, tiny_model: Path
) -> None:
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(
        json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]})
    )
    remote, chatglm = tmp_path / "remote", tmp_path / "chatglm"
    for path, model_type in ((remote, "baichuan"), (chatglm, "chatglm")):
        path.mkdir()
        (path / "config.json").write_text(
            json.dumps({"model_type": model_type, "auto_map": {"AutoModelForCausalLM": "m.M"}})
        )
    broken = tmp_path / "broken"
    write_jsonl(
        broken / "train.json",
        [{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
    )
    with open(broken / "train.json", "a") as f:
        f.write('{"conversations": [\n')
    (broken / "dev.json").write_text("")
    cases = [
        ({"model": t5}, r"is a 't5' model \(T5ForConditionalGeneration\), not a causal language model"),
        ({"model": tmp_path / "THUDM" / "chatglm3-6b"}, "is not a local directory; tunelab never downloads"),
        ({"model": remote}, "trust_remote_code=true"),
        ({"model": chatglm}, r"THUDM's original layout.*import it once with `tunelab model import NAME"),
        ({"data": broken}, r"broken/train\.json:2: not valid JSON"),
        ({"data": tmp_path}, r"train\.json not found \(data_config\.train_file"),
        ({"resume": "maybe"}, "must be yes, no or a checkpoint step"),
        ({"resume": "7"}, "no complete checkpoint-7"),
    ]
    for case, message in cases:
        code, records = run_recipe(
            case.get("data", data_dir), tmp_path / "out", resume=case.get("resume"), model=case.get("model")
        )
        assert code == 2, (message, records)
        assert re.search(message, events(records, "failed")[0]["reason"]), (message, records)


def test_gradient_checkpointing_epochs_and_merged_model(
    run_recipe: Run, data_dir: Path, tmp_path: Path, tiny_model: Path
) -> None:
    """Checkpointing activations changes memory, not the math; epochs set the step count; merge works."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    common = [
        "training_args.max_steps=-1",
        "training_args.num_train_epochs=0.25",
        "training_args.logging_steps=1",
    ]
    common += ["training_args.eval_strategy=no", "data_config.test_file=null"]
    code, plain = run_recipe(data_dir, tmp_path / "plain", *common)
    assert code == 0
    code, checkpointed = run_recipe(
        data_dir,
        tmp_path / "gc",
        *common,
        "training_args.gradient_checkpointing=true",
        "tunelab.merge_adapter=true",
    )
    assert code == 0
    losses = [[r["loss"] for r in events(records, "train")] for records in (plain, checkpointed)]
    assert len(losses[0]) == 3  # 48 samples / batch 4 = 12 steps an epoch, a quarter of it
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "gc" / "merged")
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "gc")
    torch.testing.assert_close(merged(ids).logits, adapted.eval()(ids).logits, atol=1e-4, rtol=1e-4)
