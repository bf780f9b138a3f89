"""Builds the benchmark's base model the way a ChatGLM3 reaches tunelab, and the recipe's data; nothing
is downloaded.

    python bench/vllm/basemodel.py MODEL_DIR DATA_DIR [--size tiny|1b] [--device auto|cuda|cpu]

1. A ChatGLM3 in THUDM's on-disk layout, as a download of THUDM/chatglm3-6b has it (`MODEL_DIR.raw`):
   config.json with THUDM's keys and `auto_map`, THUDM's tensor names (`query_key_value`,
   `dense_h_to_4h`, ...), a sentencepiece `tokenizer.model` with ChatGLM3's id layout and THUDM's
   tokenizer_config.json. ``tiny`` is the walkthrough's stand-in (`scripts/chatglm3_standin.py`: 64
   wide, 2 layers, a 1,200-piece tokenizer trained on ad copy, pretrained briefly on it). ``1b`` keeps
   that tokenizer and has a random ChatGLM3-shaped model of about a billion parameters: hidden 2048, 24
   layers, 16 heads x kv_channels 128, 2 KV groups (multi-query, as ChatGLM3), ffn 5504, 1,280 vocabulary
   rows (1.04 B parameters), made on the GPU in fp16 (as THUDM publishes) and written in THUDM's layout
   by `tunelab.recipes.glm.layout`.
2. `python -m tunelab.recipes.glm import MODEL_DIR.raw MODEL_DIR`: the real importer, as users run it
   (and as `tunelab model import` runs it in a job), into transformers' native `glm` with a fast
   tokenizer, ChatGLM3's chat template and its stop ids. MODEL_DIR is what vLLM and the recipe load.

DATA_DIR gets ``train.json`` and ``dev.json`` in ChatGLM3's conversations format (AdvertiseGen_fix).
The last line printed is JSON: size, parameters, seconds, and the import's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))  # as the demo and the e2e test import the stand-in

import chatglm3_standin  # noqa: E402

# ChatGLM3's architecture at about 1B parameters (THUDM's config keys).
ONE_B = {
    "hidden_size": 2048,
    "num_layers": 24,
    "num_attention_heads": 16,
    "kv_channels": 128,
    "multi_query_group_num": 2,
    "ffn_hidden_size": 5504,
    "seq_length": 8192,
    "torch_dtype": "float16",
}


def write_data(data_dir: Path, n_train: int, seed: int = 0) -> Path:
    from tunelab.recipes import advertisegen_sample

    raw = data_dir.with_name(data_dir.name + "-raw")
    advertisegen_sample.write_sample(raw, n_train=n_train, n_dev=8, seed=seed)
    return advertisegen_sample.write_conversations(raw, data_dir)


def parameter_count(model_dir: Path) -> int:
    """Parameters in the safetensors files of ``model_dir``, read from their headers."""
    total = 0
    for path in model_dir.glob("*.safetensors"):
        with path.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


def build_1b_raw(raw: Path, device: str) -> None:
    """A random ChatGLM3-shaped ~1B model in THUDM's layout, with the stand-in's tokenizer."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    from tunelab.recipes import advertisegen_sample
    from tunelab.recipes.glm.config import glm_config
    from tunelab.recipes.glm.layout import write_chatglm3_layout

    s = chatglm3_standin
    partial = raw.with_name(raw.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "tokenizer.model").write_bytes(s.train_tokenizer(advertisegen_sample.corpus().splitlines()))
    (partial / "tokenizer_config.json").write_text(json.dumps(s.THUDM_TOKENIZER_CONFIG, indent=2) + "\n")
    stop_ids = [2, s.PIECES + s.SPECIALS.index("<|user|>"), s.PIECES + s.SPECIALS.index("<|observation|>")]
    config_dict, _ = glm_config({**s.THUDM_CONFIG, **ONE_B}, stop_token_ids=stop_ids)
    config = GlmConfig(**{k: v for k, v in config_dict.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    with torch.device(device):
        model = GlmForCausalLM._from_config(config, dtype=torch.float16)  # transformers' init, std 0.02
    state = {name: tensor.to("cpu") for name, tensor in model.state_dict().items()}
    write_chatglm3_layout(state, model.config.to_dict(), partial)
    del model
    partial.rename(raw)


def import_model(raw: Path, model_dir: Path) -> float:
    """`python -m tunelab.recipes.glm import RAW MODEL_DIR` in a process of its own; its seconds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "services" / "trainer"), env.get("PYTHONPATH")])
    )
    shutil.rmtree(model_dir, ignore_errors=True)
    started = time.monotonic()
    cmd = [sys.executable, "-m", "tunelab.recipes.glm", "import", str(raw), str(model_dir)]
    subprocess.run(cmd, env=env, check=True, stdout=sys.stderr)  # stdout's last line is ours
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--size", choices=["tiny", "1b"], default="tiny")
    parser.add_argument("--device", default="auto", help="where the 1b model is initialised")
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--pretrain-steps", type=int, default=150, help="tiny: the stand-in's pretraining")
    parser.add_argument("--data-only", action="store_true", help="write DATA_DIR only (MODEL_DIR exists)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    write_data(args.data_dir, args.train_rows)
    if args.data_only:
        print(json.dumps({"size": None, "parameters": parameter_count(args.model_dir)}), flush=True)
        return 0
    raw = args.model_dir.with_name(args.model_dir.name + ".raw")
    shutil.rmtree(raw, ignore_errors=True)
    if args.size == "1b":
        device = args.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        build_1b_raw(raw, device)
    else:
        chatglm3_standin.build_chatglm3_standin(
            raw, args.pretrain_steps, echo=lambda line: print(line, file=sys.stderr)
        )
    built = time.monotonic() - started
    import_s = import_model(raw, args.model_dir)
    info = {
        "size": args.size,
        "layout": "THUDM chatglm3 -> python -m tunelab.recipes.glm import -> GlmForCausalLM",
        "parameters": parameter_count(args.model_dir),
        "raw_seconds": round(built, 1),
        "import_seconds": round(import_s, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    shutil.rmtree(raw, ignore_errors=True)
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
