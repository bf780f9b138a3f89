"""OpenAI-compatible routes with vLLM's semantics: /v1/completions, /v1/chat/completions, /v1/models."""
