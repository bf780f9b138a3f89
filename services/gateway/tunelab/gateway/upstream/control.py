"""Control-plane calls to a replica speaking vLLM's OpenAI API (vLLM, or the embedded engine):
health, the served models, runtime LoRA loading. Synchronous (httpx), called from the
deployment threads, never from the request path.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from tunelab.common.errors import FailedPrecondition, Unavailable


@dataclass(frozen=True)
class ServedModel:
    id: str
    root: str = ""
    parent: str = ""


class ReplicaClient:
    def __init__(self, base_url: str, api_key: str = "", timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str) -> httpx.Response:
        try:
            return self._http.get(path)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{self.base_url}{path}: {exc or type(exc).__name__}") from None
        except RuntimeError:  # closed by an unload racing this check: the deployment is going away
            raise Unavailable(f"{self.base_url}{path}: the deployment is being unloaded") from None

    def health(self) -> None:
        """Raises Unavailable unless ``/health`` answers 200."""
        resp = self._get("/health")
        if resp.status_code != 200:
            raise Unavailable(f"{self.base_url}/health answered {resp.status_code}")

    def models(self) -> list[ServedModel]:
        resp = self._get("/v1/models")
        if resp.status_code != 200:
            raise Unavailable(f"{self.base_url}/v1/models answered {resp.status_code}: {resp.text[:200]}")
        return [
            ServedModel(m["id"], m.get("root") or "", m.get("parent") or "")
            for m in resp.json().get("data", [])
        ]

    def load_adapter(self, name: str, path: str, timeout_s: float = 120.0) -> None:
        """Loads a LoRA adapter at runtime; FailedPrecondition with the fix when the server does not
        allow it (vLLM registers the route only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
        ``timeout_s`` is its own: vLLM answers only once the adapter is in the engine, which can
        take longer than the health checks' timeout this client otherwise uses."""
        try:
            resp = self._http.post(
                "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}, timeout=timeout_s
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"{self.base_url}/v1/load_lora_adapter: {exc}") from None
        if resp.status_code in (404, 405):
            raise FailedPrecondition(
                f"{self.base_url} does not load LoRA adapters at runtime. Either start vLLM with "
                f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora, or list the adapter at start: "
                f"`vllm serve BASE --enable-lora --max-lora-rank RANK --lora-modules {name}={path}`"
            )
        if resp.status_code >= 300 and "already" not in resp.text:
            raise FailedPrecondition(
                f"{self.base_url} could not load adapter {name!r} from {path}: "
                f"{resp.status_code} {resp.text[:500]}"
            )

    def unload_adapter(self, name: str) -> None:
        try:
            self._http.post("/v1/unload_lora_adapter", json={"lora_name": name})
        except (httpx.HTTPError, RuntimeError):
            pass
