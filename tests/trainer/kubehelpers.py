"""A recording stand-in for the Kubernetes API, and a way to run a job pod's container here.

No Kubernetes cluster (not even kind or k3s: no container runtime) can run on the machines these
tests run on, so the executor's calls are checked against :class:`RecordingKubeApi`: it keeps the
objects created, answers get/list/delete from them as the API server would (409 for a name taken,
404 for a missing one, label selectors), records every call in order, and lets a test set what the
cluster would report (Job status, pods, pod logs) or make a call fail with a status code.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.trainer.kube.api import PODS, Kind, KubeApiError

Obj = dict[str, Any]


@dataclass
class Call:
    verb: str  # create, get, list, delete, log
    resource: str  # jobs.batch, services, pods, trainjobs.trainer.kubeflow.org
    namespace: str
    name: str = ""
    body: Obj | None = None  # create: the object sent
    options: Obj = field(default_factory=dict)  # list: selector; delete: propagation, grace


def _matches(labels: dict[str, str], selector: str) -> bool:
    pairs = (term.split("=", 1) for term in selector.split(",") if term)
    return all(labels.get(k) == v for k, v in pairs)


class RecordingKubeApi:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (resource, namespace, name) → object
        self.logs: dict[tuple[str, str], str] = {}  # (namespace, pod) → log text
        self.failures: dict[tuple[str, str], KubeApiError] = {}  # (verb, resource) → raised every time
        self._uids = 0

    # -- what tests arrange -----------------------------------------------------------------
    def fail(self, verb: str, kind: Kind, status: int, reason: str, message: str = "") -> None:
        self.failures[(verb, kind.resource)] = KubeApiError(status, reason, message)

    def put(self, kind: Kind, obj: Obj) -> Obj:
        meta = obj["metadata"]
        self._uids += 1
        meta.setdefault("uid", f"uid-{self._uids}")
        self.objects[(kind.resource, meta["namespace"], meta["name"])] = obj
        return obj

    def obj(self, kind: Kind, namespace: str, name: str) -> Obj:
        return self.objects[(kind.resource, namespace, name)]

    def set_status(
        self, kind: Kind, namespace: str, name: str, status: Obj, suspend: bool | None = None
    ) -> None:
        obj = self.obj(kind, namespace, name)
        obj["status"] = status
        if suspend is not None:
            obj["spec"]["suspend"] = suspend

    def add_pod(self, namespace: str, name: str, labels: dict[str, str], status: Obj, index: int = 0) -> None:
        notes = {"batch.kubernetes.io/job-completion-index": str(index)}
        meta = {"name": name, "namespace": namespace, "labels": labels, "annotations": notes}
        self.put(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status})

    def verbs(self) -> list[tuple[str, str]]:
        return [(c.verb, c.resource) for c in self.calls]

    # -- the API ----------------------------------------------------------------------------
    def _record(self, call: Call) -> None:
        self.calls.append(call)
        if (err := self.failures.get((call.verb, call.resource))) is not None:
            raise err

    def create(self, kind: Kind, namespace: str, body: Obj) -> Obj:
        name = body["metadata"]["name"]
        self._record(Call("create", kind.resource, namespace, name, copy.deepcopy(body)))
        if (kind.resource, namespace, name) in self.objects:
            raise KubeApiError(409, "AlreadyExists", f'{kind.resource} "{name}" already exists')
        return copy.deepcopy(self.put(kind, copy.deepcopy(body)))

    def get(self, kind: Kind, namespace: str, name: str) -> Obj:
        self._record(Call("get", kind.resource, namespace, name))
        try:
            return copy.deepcopy(self.objects[(kind.resource, namespace, name)])
        except KeyError:
            raise KubeApiError(404, "NotFound", f'{kind.resource} "{name}" not found') from None

    def list(self, kind: Kind, namespace: str, label_selector: str) -> list[Obj]:
        self._record(Call("list", kind.resource, namespace, options={"labelSelector": label_selector}))
        return [
            copy.deepcopy(o)
            for (res, ns, _), o in self.objects.items()
            if res == kind.resource
            and ns == namespace
            and _matches(o["metadata"].get("labels", {}), label_selector)
        ]

    def delete(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        propagation: str = "Background",
        grace_s: int | None = None,
    ) -> None:
        options = {"propagationPolicy": propagation, "gracePeriodSeconds": grace_s}
        self._record(Call("delete", kind.resource, namespace, name, options=options))
        if self.objects.pop((kind.resource, namespace, name), None) is None:
            raise KubeApiError(404, "NotFound", f'{kind.resource} "{name}" not found')

    def log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        self._record(
            Call("log", "pods/log", namespace, pod, options={"container": container, "tail": tail_lines})
        )
        lines = self.logs.get((namespace, pod), "").splitlines()
        return "\n".join(lines[-tail_lines:])


# -- running a job pod's container here -------------------------------------------------------
def container_env(container: Obj, index: int, secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The variables Kubernetes would give the container: literal values, Secret keys, and the
    completion index the Job controller adds (JOB_COMPLETION_INDEX and its annotation)."""
    env = {"JOB_COMPLETION_INDEX": str(index)}
    for var in container.get("env", []):
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
        elif "job-completion-index" in source.get("fieldRef", {}).get("fieldPath", ""):
            env[var["name"]] = str(index)
        else:
            raise AssertionError(f"no stand-in for {var}")
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def run_container(
    container: Obj, index: int, mounts: dict[str, Path], secrets: dict[tuple[str, str], str], log: Path
) -> subprocess.Popen[bytes]:
    """Starts the container's command as a process with its environment: ``mounts`` maps the
    container's volume paths to folders here, the other volumes go beside ``log`` (the image's
    ``tunelab`` is this venv's)."""
    mounts = dict(mounts)
    for volume in container.get("volumeMounts", []):
        if "subPath" not in volume:
            mounts.setdefault(volume["mountPath"], log.parent / f"pod-{volume['name']}")
    env = container_env(container, index, secrets)
    for var, value in list(env.items()):
        for path, local in mounts.items():
            if value == path or value.startswith(path + "/"):
                env[var] = str(local) + value[len(path) :]
    program, *rest = [expand(a, env) for a in [*container["command"], *container["args"]]]
    if program == "tunelab":
        program = str(Path(sys.executable).parent / "tunelab")
    base = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
    with log.open("ab") as out:
        return subprocess.Popen([program, *rest], env={**base, **env}, stdout=out, stderr=subprocess.STDOUT)
