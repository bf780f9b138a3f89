"""ChatGLM3 (THUDM's `chatglm` remote-code layout) to transformers' native `glm` architecture, and back.

ChatGLM3-6B ships its own model code written for transformers 4.3x. tunelab imports such a checkpoint
once into `GlmForCausalLM` (the same maths: RMSNorm pre-norm blocks, grouped-query attention, rotary
embeddings on the first half of each head interleaved, bias on QKV only, SwiGLU) with a fast
tokenizer and ChatGLM3's chat template, so that training, packing and serving (the embedded engine,
vLLM) use their native paths with no remote code. The modules:

- `tokenizer` (+ `tokenizer_probe`): ChatGLM3's sentencepiece `tokenizer.model` -> `tokenizer.json` +
  chat template, verified against sentencepiece itself before it is accepted
- `config`: THUDM's config.json -> GlmConfig, refusing variants the native architecture can't reproduce
- `weights` (+ `shards`): tensors converted shard by shard, memory bounded by the largest shard
- `importer`: one import, all or nothing, with its provenance (`tunelab-import.json`)
- `adapters`: a LoRA adapter trained on the imported model -> ChatGLM3's `query_key_value` layout
- `layout`: a native GLM model -> THUDM's on-disk layout (for stand-ins and round trips)
- `__main__`: `python -m tunelab.recipes.glm import SRC DST`, run by `tunelab model import` as a job
"""
