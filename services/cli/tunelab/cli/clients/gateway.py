"""GatewayClient: deployments and API keys over gRPC, and generate requests over the gateway's HTTP
front door (Triton generate, the seed's request)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from typing import Any

import grpc

from tunelab.common.errors import InvalidArgument, TunelabError
from tunelab.common.names import parse_version, resource_name
from tunelab.gateway.v1 import gateway_pb2 as pb
from tunelab.gateway.v1 import gateway_pb2_grpc


def deployment_name(name: str) -> str:
    return name if name.startswith("deployments/") else f"deployments/{name}"


def model_source(ref: str, subpath: str = "") -> pb.ModelSource:
    """``NAME[@VERSION]`` of a dataset (``dataset:`` prefix optional), or a path (``/…``, ``./…``,
    or ``path:ANYTHING`` such as a model id vLLM serves)."""
    if ref.startswith("path:"):
        return pb.ModelSource(path=ref[5:], subpath=subpath)
    if ref.startswith(("/", "./", "../", "~")):
        return pb.ModelSource(path=ref, subpath=subpath)
    ident, number = parse_version(ref.removeprefix("dataset:"), "datasets", "dataset")
    return pb.ModelSource(dataset_version=resource_name("datasets", ident, number), subpath=subpath)


def model_ref(text: str) -> pb.ModelSource:
    """A ``--base`` or ``--adapter`` reference: ``[dataset:]NAME[@VERSION][:SUBDIR]`` (a folder of a
    dataset version, e.g. ``output@3:checkpoint-3000``), ``/path`` or ``./path``, or ``path:ID``."""
    if text.startswith(("path:", "/", "./", "../", "~")):
        return model_source(text)
    ref, _, subdir = text.removeprefix("dataset:").partition(":")
    return model_source(ref, subdir)


class GatewayError(TunelabError):
    """The gateway's HTTP front door answered with an error."""


class GatewayClient:
    def __init__(self, channel: grpc.Channel, http_url: str, api_key: str = "") -> None:
        self.stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.http_url = http_url.rstrip("/")
        self.api_key = api_key

    # -- deployments (gRPC) -----------------------------------------------------------------
    def deploy(self, deployment_id: str, deployment: pb.Deployment) -> pb.Deployment:
        req = pb.CreateDeploymentRequest(deployment_id=deployment_id, deployment=deployment)
        return self.stub.CreateDeployment(req).deployment

    def get(self, name: str) -> pb.Deployment:
        return self.stub.GetDeployment(pb.GetDeploymentRequest(name=deployment_name(name))).deployment

    def list(self) -> Iterator[pb.Deployment]:
        token = ""
        while True:
            resp = self.stub.ListDeployments(pb.ListDeploymentsRequest(page_token=token))
            yield from resp.deployments
            token = resp.next_page_token
            if not token:
                return

    def delete(self, name: str) -> None:
        self.stub.DeleteDeployment(pb.DeleteDeploymentRequest(name=deployment_name(name)))

    def watch(self, name: str) -> Iterator[pb.Deployment]:
        for resp in self.stub.WatchDeployment(pb.WatchDeploymentRequest(name=deployment_name(name))):
            yield resp.deployment

    def wait_loaded(self, name: str) -> pb.Deployment:
        """The deployment once it has left PENDING and LOADING."""
        loading = (pb.Deployment.STATE_PENDING, pb.Deployment.STATE_LOADING)
        last = self.get(name)
        for d in self.watch(name):
            last = d
            if d.state not in loading:
                break
        return last

    # -- API keys (gRPC) -----------------------------------------------------------------------
    def create_key(
        self, key_id: str, display_name: str = "", models: builtins.list[str] | None = None
    ) -> builtins.tuple[pb.ApiKey, str]:
        req = pb.CreateApiKeyRequest(
            api_key_id=key_id, api_key=pb.ApiKey(display_name=display_name, models=models or [])
        )
        resp = self.stub.CreateApiKey(req)
        return resp.api_key, resp.secret

    def list_keys(self) -> builtins.list[pb.ApiKey]:
        return list(self.stub.ListApiKeys(pb.ListApiKeysRequest()).api_keys)

    def delete_key(self, name: str) -> None:
        self.stub.DeleteApiKey(
            pb.DeleteApiKeyRequest(name=name if name.startswith("apiKeys/") else f"apiKeys/{name}")
        )

    # -- generate (HTTP) -----------------------------------------------------------------------
    def generate(
        self, model: str, prompt: str, sampling: dict[str, Any], stream: bool = False
    ) -> Iterator[str]:
        """Text from ``/v2/models/{model}/generate`` (or the deltas of ``generate_stream``)."""
        import httpx

        body = {"text_input": prompt, "stream": stream, "sampling_parameters": json.dumps(sampling)}
        if stream:
            body["exclude_input_in_output"] = True
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        path = f"/v2/models/{model}/generate_stream" if stream else f"/v2/models/{model}/generate"
        try:
            with (
                httpx.Client(
                    base_url=self.http_url, headers=headers, timeout=httpx.Timeout(10, read=None)
                ) as c,
                c.stream("POST", path, json=body) as resp,
            ):
                if resp.status_code >= 400:
                    resp.read()
                    raise GatewayError(f"{resp.status_code}: {_message(resp.text)}")
                if not stream:
                    yield json.loads(resp.read())["text_output"]
                    return
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        if "error" in event:
                            raise GatewayError(event["error"])
                        yield event.get("text_output", "")
        except httpx.ConnectError as exc:
            raise GatewayError(
                f"cannot reach the gateway's HTTP front door at {self.http_url} — is `tunelab up` running? "
                f"({exc}; set --gateway-url or TUNELAB_GATEWAY_URL for another gateway)"
            ) from None


def _message(text: str) -> str:
    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text
    return err.get("message", str(err)) if isinstance(err, dict) else str(err)


def parse_sampling(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs → sampling parameters (values parsed as JSON where they can be)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--param {pair!r}: use KEY=VALUE, e.g. top_k=20")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
