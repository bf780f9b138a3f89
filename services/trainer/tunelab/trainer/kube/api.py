"""The few Kubernetes API calls the executor makes, as a Protocol over plain dicts: the real one
is :class:`tunelab.trainer.kube.client.RestKubeApi`; tests pass a recording one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core API
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """As RBAC and kubectl name it: ``jobs.batch``, ``pods``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str, name: str = "") -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{root}/namespaces/{namespace}/{self.plural}" + (f"/{name}" if name else "")


JOBS = Kind("batch", "v1", "jobs", "Job")
DEPLOYMENTS = Kind("apps", "v1", "deployments", "Deployment")
SERVICES = Kind("", "v1", "services", "Service")
PODS = Kind("", "v1", "pods", "Pod")
TRAINJOBS = Kind("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")


class KubeApiError(Exception):
    """A refused call: the HTTP status and what the API server said (its Status message), or
    status 0 when the API server could not be reached."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".rstrip(": "))
        self.status, self.reason, self.message = status, reason, message


class KubeApi(Protocol):
    def create(self, kind: Kind, namespace: str, body: Obj) -> Obj:
        """The object as created (with its uid)."""
        ...

    def get(self, kind: Kind, namespace: str, name: str) -> Obj: ...

    def list(self, kind: Kind, namespace: str, label_selector: str) -> list[Obj]: ...

    def delete(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        propagation: str = "Background",
        grace_s: int | None = None,
    ) -> None: ...

    def log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        """The last lines of a container's log."""
        ...
