"""The baseline: ChatGLM3 finetune_hf.py's LoRA setup on THUDM's own model code, with public libraries.

As finetune_hf.py does with configs/lora.yaml: PEFT LoRA r=8, alpha 32, dropout 0.1 on PEFT's default
target modules for `chatglm` (query_key_value, one fused Linear per layer); trainable parameters cast to
fp32; no fp16/bf16 flag (the bf16 weights compute in bf16); `model.gradient_checkpointing_enable()` +
`enable_input_require_grads()` (THUDM's GLMTransformer checkpoints every layer with
`torch.utils.checkpoint`, reentrant); `Seq2SeqTrainer` with batch size 4, 16 dataloader workers,
`DataCollatorForSeq2Seq(padding="longest")` over THUDM's tokenizer (left padding, with its
position_ids), no packing, lr 5e-5, logging every 10 steps. The rows are finetune_hf.py's
`process_batch` format by THUDM's tokenizer (chatglm.finetune_hf_rows), fed in the recipe's epoch order.

What transformers 5 needs beyond the tests' loaders (checked on 5.17 and 5.25): nothing here. Its
`gradient_checkpointing_enable` still honours THUDM's pre-4.35 `_set_gradient_checkpointing(module,
value)`, and torch still runs `checkpoint` without `use_reentrant` (reentrant, with a warning).

Measured without adding host syncs: a forward pre-hook adds each batch's real tokens to a device
counter, `compute_loss` keeps each step's loss on the device, and the clock is read with a CUDA
sync only at the start and the end of the measured window. Each measured step's time comes from the
Trainer's `on_step_end` (host clock, no sync), for the spread.
"""

from __future__ import annotations

import itertools
import tempfile
import time
import warnings
from typing import Any

import torch
from report import spread


def run_baseline(
    model: Any, tok: Any, rows: list[dict[str, list[int]]], warmup: int, steps: int, use_cpu: bool
) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.1))
    targets = sorted(model.peft_config["default"].target_modules)
    for param in model.parameters():  # finetune_hf.py's _prepare_model_for_training
        if param.requires_grad:
            param.data = param.data.to(torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated alias in 5.2x, the call finetune_hf makes
        model.gradient_checkpointing_enable()
    model.enable_input_require_grads()

    device = next(model.parameters()).device
    tokens = torch.zeros((), dtype=torch.long, device=device)
    counted: list[int] = [0]

    def count(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        counted[0] += 1
        if counted[0] > warmup:
            tokens.add_(kwargs["attention_mask"].sum())

    losses: list[torch.Tensor] = []
    clock: dict[str, float] = {}
    step_ends: list[float] = []

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in (warmup, warmup + steps):
                sync()
                clock["start" if state.global_step == warmup else "end"] = time.perf_counter()
            if state.global_step >= warmup:
                step_ends.append(time.perf_counter())

    class Trainer(Seq2SeqTrainer):  # type: ignore[misc]
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return torch.utils.data.SequentialSampler(self.train_dataset)  # type: ignore[arg-type]

        def compute_loss(self, *args: Any, **kwargs: Any) -> Any:
            loss = super().compute_loss(*args, **kwargs)
            losses.append((loss[0] if isinstance(loss, tuple) else loss).detach())
            return loss

    model.register_forward_pre_hook(count, with_kwargs=True)
    with tempfile.TemporaryDirectory() as out:
        training = Seq2SeqTrainingArguments(
            output_dir=out,
            max_steps=warmup + steps,
            learning_rate=5e-5,
            per_device_train_batch_size=4,
            dataloader_num_workers=0 if use_cpu else 16,
            remove_unused_columns=False,
            save_strategy="no",
            logging_strategy="steps",
            logging_steps=10,
            eval_strategy="no",
            report_to="none",
            seed=42,
            use_cpu=use_cpu,
            disable_tqdm=True,
        )
        # ChatGLM3's recipe runs on one GPU; on a machine with more, Trainer would wrap the model in
        # DataParallel over all of them. Resolve the devices first, then keep one.
        if training.n_gpu > 1:
            training._n_gpu = 1
        collator = DataCollatorForSeq2Seq(
            tok, padding="longest", label_pad_token_id=-100, return_tensors="pt"
        )
        trainer = Trainer(
            model=model, args=training, train_dataset=rows, data_collator=collator, callbacks=[Clock()]
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train()
    sync()
    seconds = clock["end"] - clock["start"]
    real = int(tokens)
    per_step = [b - a for a, b in itertools.pairwise(step_ends)]
    result = {
        "model_code": "THUDM modeling_chatglm.py (ChatGLMForConditionalGeneration)",
        "lora_targets": targets,
        "steps_measured": steps,
        "warmup_steps": warmup,
        "seconds": seconds,
        "step_seconds": seconds / steps,
        "step_seconds_spread": spread(per_step),
        "real_tokens": real,
        "tokens_per_second": real / seconds,
        "samples_per_second": 4 * steps / seconds,
        "losses": [round(float(x), 5) for x in losses],
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if device.type == "cuda":
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    del trainer
    return result
