"""How jobs and queues print: table columns, ``job get``'s description, and ``job watch``'s live
display (a progress bar with step, loss, throughput and ETA on a terminal; a line per change
otherwise, on stderr so stdout keeps only results)."""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tunelab.cli.output import COLUMNS, age, human_bytes, human_duration, render
from tunelab.cli.progress import LINE_INTERVAL_S, _plain, stderr_console

if TYPE_CHECKING:
    from rich.console import Console

    from tunelab.trainer.v1 import trainer_pb2 as pb

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
__all__ = ["describe", "follow_job", "render"]  # render: importing this module registers the columns


def job_state(job: Any) -> str:
    return str(job.State.Name(job.state)).removeprefix("STATE_")


def short(name: str) -> str:
    return name.split("/", 1)[1] if "/" in name else name


def duration(job: Any) -> str:
    if not job.start_time.seconds:
        return ""
    end = job.end_time.seconds if job.end_time.seconds else time.time()
    return human_duration(max(0.0, end - job.start_time.seconds))


def gpus(job: Any) -> str:
    n = job.spec.resources.gpu_count * max(1, job.spec.workers)
    return str(n) if n else "-"


def workload(job: Any) -> str:
    """``batch`` or ``server`` (a spec that says neither is a batch job)."""
    from tunelab.trainer.v1 import trainer_pb2 as pb

    return "server" if job.spec.workload == pb.WORKLOAD_SERVER else "batch"


def detail(job: Any) -> str:
    """State's detail: the phase while it runs, queue position while queued, else the reason."""
    state = job_state(job)
    if state == "QUEUED":
        where = f"#{job.queue_position} " if job.queue_position else ""
        return f"{where}{job.phase or job.reason}".strip()
    if state in ("STARTING", "RUNNING", "CANCELLING"):
        m = job.latest_metrics
        progress = f" {m.progress * 100:.0f}%" if m.HasField("progress") else ""
        loss = f" loss {m.loss:.4g}" if m.HasField("loss") else ""
        return f"{job.phase}{progress}{loss}"
    return job.reason


COLUMNS["tunelab.trainer.v1.Job"] = [
    ("NAME", lambda j: short(j.name)),
    ("STATE", job_state),
    ("KIND", workload),
    ("PRIORITY", lambda j: j.spec.priority_class or j.spec.priority),
    ("QUEUE", lambda j: short(j.spec.queue)),
    ("GPUS", gpus),
    ("ATTEMPT", lambda j: j.attempt or "-"),
    ("AGE", lambda j: age(j.create_time)),
    ("DURATION", duration),
    ("DETAIL", detail),
    ("ENDPOINT", lambda j: j.endpoint or "-"),
    ("COMMAND", lambda j: shlex.join(j.spec.command)[:60]),
]


def _quota(used: int, quota: Any, fmt: Any = str) -> str:
    return f"{fmt(used)}/{fmt(quota)}" if quota is not None else f"{fmt(used)}/-"


COLUMNS["tunelab.trainer.v1.Queue"] = [
    ("NAME", lambda q: short(q.name)),
    ("STATE", lambda q: str(q.State.Name(q.state)).removeprefix("STATE_")),
    ("GPUS", lambda q: _quota(q.usage.gpus_in_use, q.gpu_quota if q.HasField("gpu_quota") else None)),
    (
        "RUNNING",
        lambda q: _quota(
            q.usage.running_jobs, q.max_concurrent_jobs if q.HasField("max_concurrent_jobs") else None
        ),
    ),
    ("QUEUED", lambda q: q.usage.queued_jobs),
    ("AGE", lambda q: age(q.create_time)),
    ("DESCRIPTION", lambda q: q.description),
]
COLUMNS["tunelab.trainer.v1.MetricsPoint"] = [
    ("ATTEMPT", lambda p: p.attempt),
    ("STEP", lambda p: p.step),
    ("LOSS", lambda p: f"{p.loss:.4f}" if p.HasField("loss") else ""),
    ("LR", lambda p: f"{p.learning_rate:.3g}" if p.HasField("learning_rate") else ""),
    ("TOKENS/S", lambda p: f"{p.tokens_per_second:.0f}" if p.HasField("tokens_per_second") else ""),
    ("PROGRESS", lambda p: f"{p.progress * 100:.0f}%" if p.HasField("progress") else ""),
    ("EVAL", lambda p: ", ".join(f"{k} {v:.4g}" for k, v in sorted(p.eval_scores.items()))),
]


def policy_name(value: int) -> str:
    from tunelab.trainer.v1 import trainer_pb2 as pb

    return str(pb.RestartPolicy.Name(value)).removeprefix("RESTART_POLICY_").lower().replace("_", "-")  # type: ignore[arg-type]


def describe(job: pb.Job) -> str:
    """``tunelab job get``: the job for people, a field per line."""
    s = job.spec
    res = s.resources
    lines = [
        f"Name:        {short(job.name)}"
        + (f" ({s.display_name})" if s.display_name and s.display_name != short(job.name) else ""),
        f"State:       {job_state(job)}" + (f" ({job.reason})" if job.reason else ""),
    ]
    if job.message:
        lines.append(f"Message:     {job.message}")
    if workload(job) == "server":
        port = f"port {s.port}" if s.port else "a port the executor picks"
        lines.append(f"Workload:    server on {port}, endpoint {job.endpoint or '- (not running)'}")
    else:
        lines.append("Workload:    batch")
    lines += [
        f"Phase:       {job.phase or '-'}",
        f"Priority:    {s.priority_class or '-'} ({s.priority})",
        f"Queue:       {short(s.queue)}" + (f", position {job.queue_position}" if job.queue_position else ""),
        f"Resources:   cpu {res.cpu_millis / 1000:g}, memory {human_bytes(res.memory_bytes)}, "
        f"GPUs {res.gpu_count} per worker x {max(1, s.workers)} worker(s)",
        f"Working dir: {s.working_dir}",
        f"Command:     {shlex.join(s.command)}",
        f"Environment: {s.environment or '(the agent Python)'}",
        f"Restart:     {policy_name(s.restart_policy)}, backoff limit {s.backoff_limit}",
    ]
    for m in s.datasets:
        mode = "output" if m.mode == m.MODE_OUTPUT else "input"
        version = m.committed_version or m.resolved_version or "(empty)"
        lines.append(f"Dataset:     {m.path} <- {mode} {version}")
    if job.assigned_gpus:
        lines.append(f"GPUs:        {','.join(job.assigned_gpus)} on {job.node}")
    m = job.latest_metrics
    if m.step:
        lines.append(f"Metrics:     {metrics_text(m)}")
    if job.latest_eval_scores:
        scores = ", ".join(f"{k} {v:.4g}" for k, v in sorted(job.latest_eval_scores.items()))
        lines.append(f"Eval:        {scores}")
    for a in job.attempts:
        end = f", exit {a.exit_code}" if a.HasField("exit_code") else ""
        state = str(job.State.Name(a.state)).removeprefix("STATE_") if a.state else ""
        lines.append(f"Attempt {a.attempt}:   {state} {a.reason}{end} {a.message}".rstrip())
    return "\n".join(lines)


def metrics_text(m: Any) -> str:
    parts = [f"step {m.step}" + (f"/{m.total_steps}" if m.HasField("total_steps") else "")]
    if m.HasField("loss"):
        parts.append(f"loss {m.loss:.4f}")
    if m.HasField("tokens_per_second"):
        parts.append(f"{m.tokens_per_second:.0f} tok/s")
    if m.HasField("progress"):
        parts.append(f"{m.progress * 100:.0f}%")
    if m.eta.seconds:
        parts.append(f"ETA {human_duration(m.eta.seconds)}")
    return ", ".join(parts)


def follow_job(updates: Iterable[pb.Job], console: Console | None = None) -> pb.Job | None:
    """Shows ``updates`` until the job finishes; returns the last one."""
    console = console or stderr_console()
    last = None
    if console.is_terminal:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (
            TextColumn("{task.description}", markup=False),
            TextColumn("{task.fields[state]:<10}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[metrics]}", markup=False),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("", total=None, state="", metrics="")
            for last in updates:
                m = last.latest_metrics
                total = 1.0 if m.HasField("progress") or job_state(last) == "SUCCEEDED" else None
                done = 1.0 if job_state(last) == "SUCCEEDED" else m.progress
                text = metrics_text(m) if m.step else (last.phase or last.reason)
                bar.update(
                    task,
                    description=short(last.name),
                    state=job_state(last),
                    metrics=text,
                    total=total,
                    completed=done,
                )
        return last
    key, when = None, 0.0
    for last in updates:
        state = job_state(last)
        now_key = (state, last.phase, last.attempt)
        if now_key == key and time.monotonic() - when < LINE_INTERVAL_S and state not in TERMINAL:
            continue
        key, when = now_key, time.monotonic()
        m = last.latest_metrics
        extra = f": {metrics_text(m)}" if m.step else ""
        _plain(f"{short(last.name)} {state} {last.phase or last.reason}{extra}".rstrip())
    return last
