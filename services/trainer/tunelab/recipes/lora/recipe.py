"""The LoRA fine-tuning recipe: one class, read top to bottom.

    recipe = LoRAFinetuneRecipe(cfg, data_dir, model_dir, resume, metrics)   # checks inputs, fails fast
    recipe.setup()      # tokenizer, data, model + LoRA, optimizer, scheduler, resume state
    recipe.train()      # the loop: forward/backward, clip, step, log, eval, checkpoint
    recipe.cleanup()

One process on one device (a GPU when there is one, else CPU), or data-parallel under torchrun: each
rank trains the same LoRA model on its share of every step's micro-batches, the gradients are summed
over ranks before the step, and rank 0 alone writes checkpoints, the adapter and metrics and runs the
evaluation (`distributed.py`). See `__main__` for the command line; `speed.py` for the profiles that
decide packing, compilation and activation checkpointing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import random
import signal
from pathlib import Path
from typing import Any

import torch

from tunelab.recipes.lora import checkpoint as ckpt
from tunelab.recipes.lora.attention import eager
from tunelab.recipes.lora.batching import Batch, BatchStream, Prefetcher
from tunelab.recipes.lora.checkpoint import Resume
from tunelab.recipes.lora.config import RecipeConfig
from tunelab.recipes.lora.data import TokenizedSet, chat_format, tokenize_file
from tunelab.recipes.lora.distributed import World, sum_gradients
from tunelab.recipes.lora.errors import CheckpointError, DataError, StopRequested
from tunelab.recipes.lora.evaluate import eval_loss, generate, similarity, stop_token_ids
from tunelab.recipes.lora.loss import loss_sum
from tunelab.recipes.lora.metrics import MetricsSink, NullMetrics, Progress, check_finite, gpu_memory
from tunelab.recipes.lora.model import (
    apply_lora,
    causal_lm_config,
    device_and_dtype,
    enable_checkpointing,
    load_model,
    load_tokenizer,
    pad_id,
)
from tunelab.recipes.lora.speed import choose_layout, compile_layers, free_gpu_bytes, plan_speed

log = logging.getLogger(__name__)


class LoRAFinetuneRecipe:
    def __init__(
        self,
        cfg: RecipeConfig,
        data_dir: str | Path,
        model_dir: str | Path,
        resume: Resume,
        metrics: MetricsSink,
    ) -> None:
        self.cfg, self.resume = cfg, resume
        self.data_dir, self.model_dir = Path(data_dir), Path(model_dir)
        args = cfg.training_args
        self.world = World.from_env()
        self.metrics = metrics if self.world.main else NullMetrics()  # rank 0 speaks for all
        self._metrics_close = getattr(metrics, "close", None)
        if not self.data_dir.is_dir():
            raise DataError(f"DATA_DIR {self.data_dir} is not a directory")
        self.files = {"train": self._data_file("train_file", cfg.data_config.train_file)}
        val_file = cfg.data_config.val_file
        if val_file and args.eval_strategy == "steps" and args.do_eval is not False:
            self.files["validation"] = self._data_file("val_file", val_file)
        if cfg.data_config.test_file:
            self.files["test"] = self._data_file("test_file", cfg.data_config.test_file)
        self.model_config = causal_lm_config(self.model_dir, cfg.tunelab.trust_remote_code)
        self.device, self.dtype = device_and_dtype(args)
        self.world.start(self.device)
        self.output_dir = Path(args.output_dir)
        self.checkpoints = ckpt.CheckpointManager(self.output_dir, args.save_total_limit)
        self.base_model_name = cfg.tunelab.base_model_name or self.model_dir.resolve().name
        self.step = 0
        self._saved_step = -1
        self._stop_signal: int | None = None

    def _data_file(self, key: str, name: str) -> Path:
        path = self.data_dir / name
        if not path.is_file():
            raise DataError(
                f"{path} not found (data_config.{key} is {name!r}, relative to DATA_DIR {self.data_dir})"
            )
        return path

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, args = self.cfg, self.cfg.training_args
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        self.tokenizer = load_tokenizer(self.model_dir, cfg.tunelab.trust_remote_code)
        self.format = chat_format(self.tokenizer, cfg.tunelab.chat_template)
        self.pad_id = pad_id(self.tokenizer)
        self.data: dict[str, TokenizedSet] = {}
        for split, path in self.files.items():
            self.data[split] = tokenize_file(
                path, self.tokenizer, self.format, cfg.max_input_length, cfg.max_output_length
            )
            log.info("%s: %s (%s)", split, path, self.data[split].stats)
        train = self.data["train"]
        if train.truncated_answers or train.truncated_prompts:
            log.warning(
                "%s: %d answers cut to max_output_length, %d prompts cut from the left to fit",
                train.path,
                train.truncated_answers,
                train.truncated_prompts,
            )

        base = load_model(
            self.model_dir,
            self.model_config,
            self.device,
            self.dtype,
            trust_remote_code=cfg.tunelab.trust_remote_code,
            attn_implementation=cfg.tunelab.attn_implementation,
        )
        self.model = apply_lora(base, cfg.peft_config)
        free = self.world.min_int(free_gpu_bytes(self.device), self.device)  # one row size for all ranks
        self.speed = plan_speed(cfg, self.device, self.model_config, free)
        if self.speed.checkpointing:
            enable_checkpointing(self.model)
        self.layout, self.speed = choose_layout(
            self.speed, cfg, self.model, self.device, self._autocast, self.pad_id
        )
        if self.speed.compile:
            log.info("compiling %d decoder layers (the first step includes it)", compile_layers(self.model))
        self.world.check_same(self._layout_key(), "the batch layout")  # else the shares would overlap
        self.stream = BatchStream(train.samples, self.layout, args.seed)
        per_epoch = self.stream.micro_batches_per_epoch()
        ga = args.gradient_accumulation_steps * self.world.size  # micro-batches per step, all ranks
        self.max_steps = (
            args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch / ga)
        )
        self.intervals = {
            name: _interval(getattr(args, f"{name}_steps"), self.max_steps) if on else 0
            for name, on in (
                ("logging", args.logging_strategy == "steps"),
                ("eval", "validation" in self.files),
                ("save", args.save_strategy == "steps"),
            )
        }
        if args.eval_steps is None and self.intervals["eval"]:
            self.intervals["eval"] = _interval(args.logging_steps, self.max_steps)

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params,
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
            fused=self.device.type == "cuda",
        )
        from transformers import get_scheduler

        warmup = args.warmup_steps or math.ceil(args.warmup_ratio * self.max_steps)
        self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer, warmup, self.max_steps)
        resumed_from = self._restore()
        if resumed_from is not None:
            self._saved_step = self.step  # that checkpoint exists: stopping right away needs no other
        self.world.broadcast_(params)  # the same LoRA weights on every rank, whatever the RNG did
        if self.world.size > 1:  # dropout: other masks on every rank (one process: one stream of masks)
            torch.manual_seed(args.seed + 7919 * (self.step * self.world.size + self.world.rank + 1))
        trainable = sum(p.numel() for p in params)
        total = sum(p.numel() for p in self.model.parameters())
        log.info(
            "trainable params: %d || all params: %d || trainable%%: %.4f",
            trainable,
            total,
            100 * trainable / total,
        )
        self.metrics.emit(
            "start",
            max_steps=self.max_steps,
            resumed_from=resumed_from,
            model=self.base_model_name,
            device=str(self.device),
            world_size=self.world.size,
            dtype=str(self.dtype).removeprefix("torch."),
            packing=self.layout.name,
            samples_per_step=round(len(train.samples) / per_epoch * ga, 1),
            **self.speed.describe(),
            chat_format=self.format.name,
            trainable_params=trainable,
            total_params=total,
            train_samples=len(train.samples),
            val_samples=len(self.data["validation"].samples) if "validation" in self.data else 0,
            truncated_prompts=train.truncated_prompts,
            truncated_answers=train.truncated_answers,
        )

    def _restore(self) -> int | None:
        if self.world.main:
            self.checkpoints.remove_stale_temporaries()
            if self.resume == "no":
                for path in self.checkpoints.remove_all():
                    log.warning("starting over as asked: removed %s", path)
                for name in ("adapter_config.json", "run_summary.json"):  # an earlier run's final adapter
                    (self.output_dir / name).unlink(missing_ok=True)
        self.world.barrier()  # the other ranks look for checkpoints after rank 0 has tidied up
        if self.resume == "no":
            return None
        if isinstance(self.resume, int):
            path = self.checkpoints.find(self.resume)
        else:
            found = self.checkpoints.latest()
            if found is None:
                return None
            path = found[1]
        self._check_compatible(ckpt.read_state(path), path)
        state = ckpt.load_training_state(path, self.model, self.optimizer, self.scheduler)
        self.step = int(state["step"])
        log.info("resumed from %s (step %d of %d)", path, self.step, self.max_steps)
        return self.step

    def _check_compatible(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another LoRA shape; warn where resuming would not continue the same run."""
        old, mine = state.get("config", {}), self.cfg.to_dict()
        shape = ("r", "lora_alpha", "target_modules", "use_rslora")
        theirs = {k: old.get("peft_config", {}).get(k) for k in shape}
        if theirs != {k: mine["peft_config"][k] for k in shape}:
            raise CheckpointError(
                f"{path} was trained with peft_config {theirs}, which this config changes; pass `no` to "
                "start over, or use another training_args.output_dir"
            )
        if state.get("base_model") != self.base_model_name:
            log.warning(
                "%s was trained on base model %r, not %r", path, state.get("base_model"), self.base_model_name
            )
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "seed"):
            if old.get("training_args", {}).get(key) != mine["training_args"][key]:
                log.warning("%s differs from %s: the data order after resuming is not the same", key, path)
        if state.get("world_size", 1) != self.world.size:
            log.warning(
                "%s was trained by %s process(es), this run has %d: the data order after resuming is not "
                "the same",
                path,
                state.get("world_size", 1),
                self.world.size,
            )
        layout = state.get("layout", self._layout_key())  # packed rows may be sized to another GPU
        if layout != self._layout_key():
            log.warning(
                "%s used batches %s, this run %s: the data order after resuming is not the same",
                path,
                layout,
                self._layout_key(),
            )

    def _layout_key(self) -> str:
        return f"{self.layout.name} {self.speed.describe()['micro_batch_tokens'] or 'padded'}"

    # ---------------------------------------------------------------- train
    def train(self) -> None:
        args = self.cfg.training_args
        ga = args.gradient_accumulation_steps
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
        world = self.world
        progress = Progress(self.step, self.max_steps)
        shard = self.stream.iterate(start=self.step * ga, rank=world.rank, world=world.size)
        batches = Prefetcher(shard, pin=self.device.type == "cuda")
        epoch = 0.0
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        self.model.train()
        try:
            while self.step < self.max_steps:
                micro = [next(batches) for _ in range(ga)]
                epoch = micro[-1][0]
                counts = self._step_counts([b for _, b in micro])
                label_tokens = counts[0].clamp(min=1).float()  # the loss: a mean over all ranks' tokens
                total = torch.zeros((), device=self.device)
                for _, batch in micro:
                    with self._autocast():
                        loss = loss_sum(self.model, batch.to(self.device), self.speed.checkpointing)
                    (loss / label_tokens).backward()
                    total += loss.detach()
                total = sum_gradients(world, params, total)  # gradients and loss summed over ranks
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                lr = self.scheduler.get_last_lr()[0]
                # The one host sync per step: the loss, the norm and the counts, checked before the update.
                synced = torch.cat([torch.stack([total / label_tokens, grad_norm.float()]).double(), counts])
                step_loss, norm, labels, tokens, samples, stop = synced.tolist()
                check_finite(step_loss, norm, self.step + 1, lr)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                progress.add(int(tokens), int(samples), step_loss * max(labels, 1), int(max(labels, 1)))
                self._maybe_log_eval_save(progress, epoch, lr, norm)
                # Several ranks stop after the same step: the flag was summed with the counts.
                if stop if world.active else self._stop_signal is not None:
                    signum = self._stop_signal or signal.SIGTERM
                    if self._saved_step != self.step:
                        self.save_checkpoint(epoch)
                    self.metrics.emit("stopped", step=self.step, reason=f"signal {signum}")
                    raise StopRequested(f"stopped by signal {signum} at step {self.step}")
        finally:
            batches.close()
            signal.signal(signal.SIGTERM, previous)
        if self.intervals["save"] and self._saved_step != self.step:
            self.save_checkpoint(epoch)
        self.save_final()

    def _step_counts(self, micro: list[Batch]) -> torch.Tensor:
        """[label tokens, real tokens, samples, stop requests] of this step, summed over the ranks.

        Built on the host, copied without waiting and summed on the device: no host sync.
        """
        local = [
            float(sum(b.num_label_tokens for b in micro)),
            float(sum(b.num_tokens for b in micro)),
            float(sum(b.num_samples for b in micro)),
            float(self._stop_signal is not None),
        ]
        counts = torch.tensor(local, dtype=torch.float64)
        if self.device.type == "cuda":
            counts = counts.pin_memory().to(self.device, non_blocking=True)
        return self.world.all_reduce_(counts)

    def _maybe_log_eval_save(self, progress: Progress, epoch: float, lr: float, grad_norm: float) -> None:
        due = {name: every and self.step % every == 0 for name, every in self.intervals.items()}
        if due["logging"] or (self.step == self.max_steps and self.intervals["logging"]):
            fields = progress.window(self.step)
            self.metrics.emit(
                "train",
                step=self.step,
                max_steps=self.max_steps,
                epoch=epoch,
                lr=lr,
                grad_norm=grad_norm,
                **gpu_memory(self.device),
                **fields,
            )
            log.info("step %d/%d loss %.4f lr %.3g", self.step, self.max_steps, fields["loss"], lr)
        with progress.pause():
            if due["eval"]:
                if self.world.main:
                    self.evaluate("validation")
                self.world.barrier()
            if due["save"]:
                self.save_checkpoint(epoch)

    def _on_signal(self, signum: int, frame: object) -> None:
        log.warning("signal %d: saving a checkpoint after this step, then stopping", signum)
        self._stop_signal = signum

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- evaluate
    def evaluate(self, split: str) -> dict[str, float]:
        args, samples = self.cfg.training_args, self.data[split].samples
        batch_size = args.per_device_eval_batch_size or args.per_device_train_batch_size
        self.model.eval()
        try:
            with eager():  # compiled layers run eagerly: evaluation shapes vary, compiling them is waste
                loss = eval_loss(self.model, samples, batch_size, self.pad_id, self.device, self._autocast)
                scores = {"loss": loss}
                rows = samples[: self.cfg.tunelab.eval_max_samples]
                if args.predict_with_generate and rows:
                    predictions = generate(
                        self.model,
                        self.tokenizer,
                        rows,
                        batch_size,
                        self._generation(),
                        self.device,
                        self._autocast,
                    )
                    scores |= similarity(predictions, [s.answer for s in rows])
                    scores["generated"] = len(rows)
        finally:
            self.model.train()
        self.metrics.emit("eval", step=self.step, split=split, samples=len(samples), **scores)
        log.info("%s at step %d: %s", split, self.step, {k: round(v, 4) for k, v in scores.items()})
        return scores

    def _generation(self) -> dict[str, Any]:
        wanted = dict(self.cfg.training_args.generation_config or {})
        cap = self.cfg.tunelab.eval_max_new_tokens
        wanted["max_new_tokens"] = min(wanted.get("max_new_tokens", 512), cap or 1 << 30)
        gen = copy.deepcopy(self.model.generation_config)
        gen.update(**wanted)
        gen.eos_token_id = stop_token_ids(self.tokenizer, gen.eos_token_id)
        gen.use_cache = True
        return {"generation_config": gen}

    # ---------------------------------------------------------------- save
    def save_checkpoint(self, epoch: float) -> Path | None:
        """checkpoint-<step>, written by rank 0 while the other ranks wait (they return None)."""
        self._saved_step = self.step
        if not self.world.main:
            self.world.barrier()
            return None

        def write(tmp: Path) -> None:
            ckpt.write_training_state(tmp, self.model, self.optimizer, self.scheduler, self.base_model_name)
            state: dict[str, Any] = {"step": self.step, "max_steps": self.max_steps, "epoch": epoch}
            state |= {"base_model": self.base_model_name, "config": self.cfg.to_dict()}
            state["layout"], state["world_size"] = self._layout_key(), self.world.size
            ckpt.write_state(tmp, state)  # last: it marks the checkpoint complete

        path = self.checkpoints.save(self.step, write)
        self.world.barrier()
        self.metrics.emit("checkpoint", step=self.step, path=str(path))
        return path

    def save_final(self) -> None:
        """The adapter at the root of output_dir, then the test split and the optional merged model
        (rank 0; the other ranks wait)."""
        if self.world.main:
            self._save_final()
        self.world.barrier()

    def _save_final(self) -> None:
        ckpt.publish_adapter(self.model, self.tokenizer, self.output_dir, self.base_model_name)
        summary: dict[str, Any] = {"base_model": self.base_model_name, "steps": self.step}
        summary["chat_format"] = self.format.name
        if "test" in self.data:
            summary["test"] = self.evaluate("test")
        if self.cfg.tunelab.merge_adapter:
            summary["merged_dir"] = str(ckpt.save_merged(self.model, self.tokenizer, self.output_dir))
        (self.output_dir / "run_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        self.metrics.emit("done", step=self.step, adapter_dir=str(self.output_dir))

    def cleanup(self) -> None:
        self.__dict__.pop("model", None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.world.stop()
        if self._metrics_close is not None:
            self._metrics_close()


# -------------------------------------------------------------------- helpers
def _interval(value: float | None, total: int) -> int:
    """transformers' *_steps: a whole number of steps, or a fraction (< 1) of the total."""
    if value is None:
        return 0
    return max(1, math.ceil(value * total)) if value < 1 else int(value)
