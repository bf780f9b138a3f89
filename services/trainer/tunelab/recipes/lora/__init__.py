"""tunelab's LoRA fine-tuning recipe: `python -m tunelab.recipes.lora DATA_DIR MODEL_DIR CONFIG [yes|no|N]`.

Accepts ChatGLM3 finetune_demo's `configs/lora.yaml` unchanged and runs on any Hugging Face causal LM
directory. Modules: config (+ schema: YAML -> typed settings), data (conversations -> tokens), batching
(padded or packed batches), attention (varlen attention, the packing probe), loss (chunked, answer
tokens only), speed (profiles, compilation), model (loading + LoRA), recipe (the one class),
checkpoint, evaluate, metrics.
"""
