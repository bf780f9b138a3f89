"""The baseline: ChatGLM3 finetune_hf.py's LoRA setup, reproduced with public libraries.

As finetune_hf.py does with configs/lora.yaml: PEFT LoRA r=8, alpha 32, dropout 0.1 on PEFT's default
target modules (q_proj, v_proj for Llama); trainable parameters cast to fp32; no fp16/bf16 flag (the
bf16 weights compute in bf16); `model.gradient_checkpointing_enable()` + `enable_input_require_grads()`;
`Seq2SeqTrainer` with batch size 4, 16 dataloader workers, `DataCollatorForSeq2Seq(padding="longest")`
(no packing), lr 5e-5, logging every 10 steps. The samples are the recipe's own tokenization of the
same file, fed in the recipe's epoch order, so both sides see the same data.

Measured without adding host syncs: a forward pre-hook adds each batch's real tokens to a device
counter, `compute_loss` keeps each step's loss on the device, and the clock is read with a CUDA
sync only at the start and the end of the measured window.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch


def run_baseline(
    model: Any, tok: Any, samples: list[Any], order: list[int], warmup: int, steps: int, use_cpu: bool
) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.1))
    for param in model.parameters():  # finetune_hf.py's _prepare_model_for_training
        if param.requires_grad:
            param.data = param.data.to(torch.float32)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()

    dataset = [{"input_ids": samples[i].input_ids, "labels": samples[i].labels} for i in order]
    device = next(model.parameters()).device
    tokens = torch.zeros((), dtype=torch.long, device=device)
    counted: list[int] = [0]

    def count(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        counted[0] += 1
        if counted[0] > warmup:
            tokens.add_(kwargs["attention_mask"].sum())

    losses: list[torch.Tensor] = []
    clock: dict[str, float] = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in (warmup, warmup + steps):
                sync()
                clock["start" if state.global_step == warmup else "end"] = time.perf_counter()

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
        collator = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
        trainer = Trainer(
            model=model, args=training, train_dataset=dataset, data_collator=collator, callbacks=[Clock()]
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train()
    sync()
    seconds = clock["end"] - clock["start"]
    real = int(tokens)
    result = {
        "steps_measured": steps,
        "warmup_steps": warmup,
        "seconds": seconds,
        "step_seconds": seconds / steps,
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
