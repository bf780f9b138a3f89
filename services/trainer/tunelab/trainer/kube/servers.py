"""The Kubernetes objects of a server workload's attempt (WORKLOAD_SERVER, e.g. ``vllm serve``): a
Deployment of one pod and a Service in front of it. Pure functions, dicts out.

The pod is a Job's pod of one worker (:func:`.manifests.job_manifest`: the same agent, image,
variables, resources, security contexts and volumes) with what a server adds: restartPolicy Always
(the only one a Deployment takes), its port, and a TCP readiness probe on that port, so that the
Service sends requests only once the server listens. The agent runs the command and reports as in
a Job, and the trainer decides restarts: when the command exits the attempt ends, its Deployment
is deleted, and the next attempt is a Deployment of its own. No liveness probe: a restarted
container would be the agent of an attempt that has ended, not a new server.
"""

from __future__ import annotations

from tunelab.trainer.kube import manifests as mf
from tunelab.trainer.v1 import trainer_pb2 as pb

DEFAULT_PORT = 8000  # where the spec leaves the port to the executor (vLLM's own default)
PORT_NAME = "http"
LABEL_SERVER = "tunelab.dev/server"  # on the pod: the name of its Deployment and Service
KUEUE_PREFIX = "kueue.x-k8s.io/"


def port_of(spec: pb.JobSpec) -> int:
    return spec.port or DEFAULT_PORT


def endpoint(namespace: str, job_id: str, attempt: int, port: int) -> str:
    """The attempt's Service, as the cluster's DNS names it."""
    return f"http://{mf.object_name(job_id, attempt)}.{namespace}.svc:{port}"


def pod_selector(name: str) -> str:
    """Label selector of the pods of the Deployment ``name``."""
    return f"{LABEL_SERVER}={name}"


def deployment_manifest(cfg: mf.PodConfig, job_id: str, attempt: int, spec: pb.JobSpec) -> mf.Manifest:
    """One replica. With Kueue, the Deployment and its pod carry the queue's labels: Kueue's pod
    integration (which its Deployment support uses) holds the pod until the queue admits it."""
    job = mf.job_manifest(cfg, job_id, attempt, spec, 1)
    name, port = job["metadata"]["name"], port_of(spec)
    template = job["spec"]["template"]
    template["spec"]["restartPolicy"] = "Always"
    (container,) = template["spec"]["containers"]
    # The only worker: index 0, where a Job's pod reads its completion index.
    container["args"] = ["0" if a == "$(JOB_COMPLETION_INDEX)" else a for a in container["args"]]
    container["env"] = [e for e in container["env"] if e["name"] != "PET_NODE_RANK"]
    container["ports"] = [{"name": PORT_NAME, "containerPort": port}]
    container["readinessProbe"] = {"tcpSocket": {"port": PORT_NAME}, "periodSeconds": 5}
    kueue = {k: v for k, v in job["metadata"]["labels"].items() if k.startswith(KUEUE_PREFIX)}
    template["metadata"]["labels"] = {**template["metadata"]["labels"], LABEL_SERVER: name, **kueue}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": job["metadata"],
        "spec": {
            "replicas": 1,
            # Never two pods of one attempt: they would share its GPUs and its agent's reports.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {LABEL_SERVER: name}},
            "template": template,
        },
    }


def service_manifest(
    cfg: mf.PodConfig, job_id: str, attempt: int, spec: pb.JobSpec, owner: mf.Manifest | None = None
) -> mf.Manifest:
    """The attempt's endpoint: a ClusterIP Service on the server's port. ``owner`` (the created
    Deployment) deletes it."""
    name = mf.object_name(job_id, attempt)
    meta: mf.Manifest = {"name": name, "namespace": cfg.namespace, "labels": mf.labels(job_id, attempt)}
    if owner is not None:
        ref = {"apiVersion": "apps/v1", "kind": "Deployment"}
        meta["ownerReferences"] = [
            {**ref, "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}
        ]
    port = port_of(spec)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": {LABEL_SERVER: name},
            "ports": [{"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "appProtocol": "http"}],
        },
    }
