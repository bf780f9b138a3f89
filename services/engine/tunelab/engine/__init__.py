"""tunelab's embedded engine: an OpenAI-compatible server (vLLM's API) on transformers + peft.

It is the CPU stand-in for vLLM in the embedded stack: one base model, any number of named LoRA
adapters (each called as its own model name), completions and chat with streaming, requests
batched together. ``python -m tunelab.engine --model DIR [--lora-modules NAME=DIR ...]``.
"""
