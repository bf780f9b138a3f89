"""The job agent (``tunelab agent``): runs one worker of one attempt where the job runs.

It reads its assignment from the trainer, materializes the job's datasets into the attempt's
staging tree (what the command sees at its working directory: a view of its own under the local
executor, the pod's volume in Kubernetes; see :mod:`.filesystem`) and its environment into the
cache, runs the command, streams logs and metrics back, commits output mounts as new dataset
versions (periodically and at the end) and reports the exit. It imports only ``tunelab.common``
and the CLI's typed clients.
"""
