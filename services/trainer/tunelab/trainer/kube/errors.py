"""Refused Kubernetes calls as the trainer's typed errors, with what to do about them."""

from __future__ import annotations

from tunelab.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TunelabError,
    Unauthenticated,
    Unavailable,
)
from tunelab.trainer.kube.api import TRAINJOBS, Kind, KubeApiError


def typed(exc: KubeApiError, verb: str, kind: Kind, namespace: str, name: str = "") -> TunelabError:
    """``verb`` is the RBAC verb of the call (create, get, list, delete)."""
    what = f"{kind.kind} {namespace}/{name}" if name else f"{kind.resource} in namespace {namespace}"
    said = exc.message or exc.reason
    if exc.status == 0:
        return Unavailable(f"cannot reach the Kubernetes API server to {verb} {what}: {said}")
    if exc.status == 401:
        return Unauthenticated(
            f"the Kubernetes API server refused the trainer's credentials ({said}): check its service "
            "account token (in cluster) or its kubeconfig"
        )
    if exc.status == 403:
        group = f'"{kind.group}"' if kind.group else '""'
        return PermissionDenied(
            f"the trainer may not {verb} {kind.resource} in namespace {namespace} (Kubernetes said: {said}); "
            f"grant it in the trainer's Role: apiGroups [{group}], resources [{kind.plural}], verbs [{verb}]"
        )
    if exc.status == 404:
        if kind == TRAINJOBS and verb in ("create", "list"):
            return FailedPrecondition(
                f"Kubernetes does not serve {kind.resource} ({said}): install Kubeflow Trainer v2 "
                "(TrainJob CRD and controller), or set TUNELAB_K8S_ENGINE=job"
            )
        if verb in ("create", "list"):
            return NotFound(
                f"Kubernetes has no namespace {namespace} ({said}): create it or set TUNELAB_K8S_NAMESPACE"
            )
        return NotFound(f"the Kubernetes {what} does not exist ({said})")
    if exc.status == 409:
        return AlreadyExists(f"the Kubernetes {what} exists already ({said})")
    if exc.status in (400, 422):
        return InvalidArgument(f"Kubernetes refused {what}: {said}")
    return Unavailable(f"Kubernetes could not {verb} {what} ({exc.status} {said}); the trainer tries again")
