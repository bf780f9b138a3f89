"""`python -m tunelab.recipes.lora DATA_DIR MODEL_DIR CONFIG [yes|no|N] [--set KEY.PATH=VALUE ...]`.

Exit codes: 0 done; 2 bad input (config, data, model directory, arguments); 3 training failed (NaN or
inf loss); 143 stopped by SIGTERM after writing a checkpoint; 1 anything unexpected (a traceback in the
log). Every failure ends with a `failed` metrics event that gives the reason.
Metrics are JSON lines on stdout (and in --metrics-file / $TUNELAB_METRICS_FILE); logs go to stderr.
Under torchrun (`torchrun --nproc-per-node N -m tunelab.recipes.lora ...`) it trains data-parallel;
rank 0 alone writes metrics and info logs, the other ranks log warnings and errors only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tunelab.recipes.lora.config import load_config
from tunelab.recipes.lora.errors import RecipeError, StopRequested
from tunelab.recipes.lora.metrics import JsonLinesMetrics, NullMetrics

log = logging.getLogger("tunelab.recipes.lora")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tunelab.recipes.lora",
        description="LoRA fine-tuning with ChatGLM3's finetune_hf.py arguments and configs/lora.yaml.",
    )
    parser.add_argument("data_dir", help="directory holding data_config's train_file / val_file / test_file")
    parser.add_argument("model_dir", help="a local Hugging Face causal LM directory (nothing is downloaded)")
    parser.add_argument("config", help="a lora.yaml-style config")
    parser.add_argument(
        "resume",
        nargs="?",
        default="",
        help="yes (default): resume from the last complete checkpoint if any; no: start over; N: that step",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value, e.g. --set training_args.max_steps=20 (repeatable)",
    )
    parser.add_argument(
        "--metrics-file", default=os.environ.get("TUNELAB_METRICS_FILE"), help="also write metrics here"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Growable segments instead of fixed blocks: packed steps of changing sizes fragment less.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    rank = os.environ.get("RANK", "?") if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else ""
    main_rank = rank in ("", "0")  # the recipe checks WORLD_SIZE / RANK / LOCAL_RANK
    where = f" [rank {rank}]" if rank else ""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s %(levelname)s{where} %(message)s"
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from tunelab.recipes.lora.checkpoint import resolve_resume
    from tunelab.recipes.lora.recipe import LoRAFinetuneRecipe

    metrics = JsonLinesMetrics(args.metrics_file) if main_rank else NullMetrics()
    recipe = None
    try:
        cfg = load_config(args.config, args.overrides)
        level = cfg.training_args.log_level
        log.setLevel(logging.INFO if level == "passive" else getattr(logging, level.upper()))
        if not main_rank:
            log.setLevel(max(log.level, logging.WARNING))
        for warning in cfg.warnings if main_rank else []:
            log.warning("%s", warning)
        for note in cfg.notes:
            log.info("%s", note)
        recipe = LoRAFinetuneRecipe(cfg, args.data_dir, args.model_dir, resolve_resume(args.resume), metrics)
        recipe.setup()
        recipe.train()
    except RecipeError as e:
        log.error("%s", e)
        metrics.emit("failed", step=recipe.step if recipe else 0, reason=str(e))
        return e.exit_code
    except StopRequested as e:
        log.warning("%s", e)
        return e.exit_code
    except Exception as e:  # a bug: the traceback goes to the log, the job still gets a reason
        log.exception("unexpected error")
        metrics.emit("failed", step=recipe.step if recipe else 0, reason=f"internal error: {e!r}")
        return 1
    finally:
        if recipe is not None:
            recipe.cleanup()
        elif isinstance(metrics, JsonLinesMetrics):
            metrics.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
