"""Builds the benchmark's base model and the LoRA recipe's training data; nothing is downloaded.

    python bench/vllm/basemodel.py MODEL_DIR DATA_DIR [--size tiny|1b] [--device auto|cuda|cpu]

Both sizes start the way the demo and the tests build their model
(``tunelab.recipes.tinymodel.build_tiny_model``: a byte-level BPE tokenizer trained with
``tokenizers`` on a generated AdvertiseGen sample, ChatML template). ``tiny`` is that model as it is
(64 wide, 2 layers). ``1b`` keeps its tokenizer and replaces the weights with a randomly initialised
Llama of TinyLlama-1.1B's shape (2048 wide, 22 layers, 32 heads, 4 KV heads, 5632 MLP; about 0.97
billion parameters with this vocabulary), built on the GPU in bfloat16, so it takes seconds.

DATA_DIR gets ``train.json`` and ``dev.json`` in ChatGLM3's conversations format (AdvertiseGen_fix).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# TinyLlama-1.1B's shape; the vocabulary is the trained tokenizer's.
ONE_B = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
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


def build_1b(out: Path, device: str) -> None:
    """Replaces the tiny weights in ``out`` with a random ~1B Llama in bfloat16."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        initializer_range=0.02,
        **ONE_B,  # type: ignore[arg-type]
    )
    for old in [*out.glob("*.safetensors"), *out.glob("*.safetensors.index.json"), *out.glob("*.bin")]:
        old.unlink()
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.to("cpu")  # type: ignore[arg-type]  # saved from host memory, wherever it was built
    model.save_pretrained(out, safe_serialization=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--size", choices=["tiny", "1b"], default="tiny")
    parser.add_argument("--device", default="auto", help="where the 1b model is initialised")
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--data-only", action="store_true", help="write DATA_DIR only (MODEL_DIR exists)")
    args = parser.parse_args(argv)
    from tunelab.recipes import advertisegen_sample
    from tunelab.recipes.tinymodel import build_tiny_model

    started = time.monotonic()
    write_data(args.data_dir, args.train_rows)
    if args.data_only:
        print(json.dumps({"size": None, "parameters": parameter_count(args.model_dir)}), flush=True)
        return 0
    build_tiny_model(args.model_dir, advertisegen_sample.corpus(), "llama")
    if args.size == "1b":
        device = args.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        build_1b(args.model_dir, device)
    info = {
        "size": args.size,
        "parameters": parameter_count(args.model_dir),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
