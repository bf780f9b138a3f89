"""The Kubernetes executor (``TUNELAB_EXECUTOR=kubernetes``): each attempt of a job is an Indexed
Job + headless Service (``TUNELAB_K8S_ENGINE=job``) or a Kubeflow TrainJob (``trainjob``) whose
pods run the job agent, ``tunelab agent``, exactly as the local executor runs it.

- :mod:`.manifests` builds the objects from a job's spec: pure functions, dicts out.
- :mod:`.observe` reads what the cluster says of them (Job/TrainJob and pod status): pure too.
- :mod:`.executor` is the executor: creates, follows and deletes them through a :class:`.client.KubeApi`.
- :mod:`.client` is that API over the official ``kubernetes`` client; :mod:`.errors` turns its
  errors into the trainer's typed errors.
"""
