"""Triton's generate extension as served with the vLLM backend: /v2/models/{m}/generate[_stream]."""
