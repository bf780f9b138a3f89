"""The HTTP front door: Triton generate, OpenAI and KServe v2 routes, health and metrics."""
