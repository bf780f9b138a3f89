"""Helpers the gateway tests import (``from gatewayhelpers import …``)."""

from __future__ import annotations

from typing import Any

from tunelab.gateway.v1 import gateway_pb2 as pb


def vllm_deployment(*urls: str, adapters: dict[str, str] | None = None, **fields: Any) -> pb.Deployment:
    return pb.Deployment(
        model_name=fields.pop("model_name", "chatglm3-ad"),
        base_model=pb.ModelSource(path="base-model"),
        adapters=[pb.LoraAdapter(name=n, source=pb.ModelSource(path=p)) for n, p in (adapters or {}).items()],
        upstream=pb.Upstream(vllm=pb.VllmUpstream(base_urls=list(urls), api_key="upstream-secret")),
        **fields,
    )
