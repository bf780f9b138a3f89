"""The executor's API calls over the official ``kubernetes`` client: its configuration (in-cluster
service account, or kubeconfig), authentication, TLS and HTTP; bodies go out and come back as the
dicts the manifests are, for core, batch and custom resources alike (the typed API classes would
round-trip them through models, dropping what a model does not know)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from tunelab.common.errors import FailedPrecondition
from tunelab.trainer.kube.api import PODS, Kind, KubeApiError, Obj

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

TIMEOUT_S = 30.0


class RestKubeApi:
    def __init__(self, api_client: ApiClient, timeout_s: float = TIMEOUT_S) -> None:
        self.client, self.timeout_s = api_client, timeout_s

    def _call(
        self, method: str, path: str, query: list[tuple[str, Any]] | None = None, body: Obj | None = None
    ) -> bytes:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        try:
            _, url, headers, body_out, _ = self.client.param_serialize(
                method,
                path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.client.call_api(method, url, headers, body_out, _request_timeout=self.timeout_s)
            response.read()
        except ApiException as exc:
            raise _api_error(exc.status or 0, exc.reason or "", exc.body) from None
        except (HTTPError, OSError) as exc:
            raise KubeApiError(0, "Unreachable", str(exc)) from None
        data: bytes = response.data or b""
        if not 200 <= response.status <= 299:
            raise _api_error(response.status, response.reason or "", data.decode("utf-8", "replace"))
        return data

    def create(self, kind: Kind, namespace: str, body: Obj) -> Obj:
        return _json(self._call("POST", kind.path(namespace), body=body))

    def get(self, kind: Kind, namespace: str, name: str) -> Obj:
        return _json(self._call("GET", kind.path(namespace, name)))

    def list(self, kind: Kind, namespace: str, label_selector: str) -> list[Obj]:
        found = _json(self._call("GET", kind.path(namespace), [("labelSelector", label_selector)]))
        return list(found.get("items") or [])

    def delete(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        propagation: str = "Background",
        grace_s: int | None = None,
    ) -> None:
        options: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if grace_s is not None:
            options["gracePeriodSeconds"] = grace_s
        self._call("DELETE", kind.path(namespace, name), body=options)

    def log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        query = [("container", container), ("tailLines", tail_lines)]
        return self._call("GET", PODS.path(namespace, pod) + "/log", query).decode("utf-8", "replace")


def _json(data: bytes) -> Obj:
    value = json.loads(data or b"{}")
    return value if isinstance(value, dict) else {}


def _api_error(status: int, reason: str, body: str | None) -> KubeApiError:
    """The API server's Status message (``{"kind": "Status", "message": ...}``) where it sent one."""
    try:
        message = str(json.loads(body or "").get("message", ""))
    except (ValueError, AttributeError):
        message = (body or "").strip()[:500]
    return KubeApiError(status, reason, message)


def connect(kubeconfig: str = "", context: str = "") -> RestKubeApi:
    """In a pod: its service account. Elsewhere: the kubeconfig (``$KUBECONFIG`` or ~/.kube/config)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=kubeconfig or None, context=context or None, client_configuration=configuration
            )
    except config.ConfigException as exc:
        raise FailedPrecondition(
            f"no Kubernetes configuration for TUNELAB_EXECUTOR=kubernetes ({exc}): run the trainer in a "
            "pod with a service account, or point KUBECONFIG at the cluster"
        ) from None
    return RestKubeApi(client.ApiClient(configuration))
