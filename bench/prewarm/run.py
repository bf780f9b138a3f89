"""Prewarm benchmark: tunelab's datasets service against `rclone copy` and `aws s3 sync`, side by
side in the same run, into the same S3 server (s3rver from npm).

    make bench-prewarm                      # 4 x 200 MiB + 2,000 files of 1-100 KiB (~944 MB)
    .venv/bin/python bench/prewarm/run.py --size-scale 0.02    # a quick check
    .venv/bin/python bench/prewarm/run.py --repeat 3           # medians of 3 interleaved rounds

Each round starts a fresh s3rver with one bucket per tool and variant, then, with the tools in a
rotating order (round 1: rclone, aws, tunelab; round 2: aws, tunelab, rclone; …):

1. first copy of the whole folder by each tool (tunelab: ``DatasetClient.push`` from start to READY,
   through ``python -m tunelab.datasets`` started as a user would start it);
2. the same again with the folder unchanged (rclone/aws re-sync; tunelab re-prewarm, a new version);
3. the ``small/`` subfolder alone into fresh buckets (share of the time the small files take);
4. tunelab only: materialize (``DatasetClient.pull``) into a new folder with an empty client cache,
   then into another new folder with the cache warm.

CPU seconds: rclone/aws from wait4's rusage of the process tree; tunelab = this process (the
client runs here and does nothing else meanwhile) + the service process (/proc). s3rver's own CPU
is reported per step too (it is single-threaded, so it bounds everyone's throughput).

Writes bench/results/prewarm.json.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common as bc
import grpc
from data import Folder, Spec, ensure_folder
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tunelab.cli.clients.datasets import DatasetClient
from tunelab.common.grpc.channel import open_channel
from tunelab.datasets.v1 import datasets_pb2 as pb

DATA_ROOT = bc.BENCH_DIR / "data"
AWS = bc.REPO / ".venv" / "bin" / "aws"
RCLONE = shutil.which("rclone") or "/usr/bin/rclone"
TOOLS = ("rclone", "aws", "tunelab")
DATASET = "bench"


# -- rclone and aws -------------------------------------------------------------------------------
class Rclone:
    name = "rclone"

    def __init__(self, s3: bc.S3rver, work: Path) -> None:
        conf = work / "rclone.conf"
        conf.write_text("")
        # AWS_* of the calling shell (AWS_CA_BUNDLE, profiles) would change rclone's S3 client.
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))},
            "RCLONE_CONFIG": str(conf),
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": s3.url,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": s3.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": s3.secret_key,
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        }

    @staticmethod
    def command(src: Path, bucket: str, prefix: str = "") -> list[str]:
        return [
            RCLONE,
            "copy",
            str(src),
            f"bench:{bucket}/{prefix}".rstrip("/"),
            "--transfers",
            "16",
            "--checkers",
            "16",
            "--s3-upload-concurrency",
            "4",
            "--s3-chunk-size",
            "64M",
            "--s3-no-check-bucket",
            "--log-level",
            "ERROR",
        ]

    def copy(self, src: Path, bucket: str, prefix: str = "") -> bc.Timed:
        return _checked(bc.run_timed(self.command(src, bucket, prefix), self.env), "rclone copy")


class AwsCli:
    name = "aws"

    def __init__(self, s3: bc.S3rver, work: Path) -> None:
        conf = work / "aws.conf"
        conf.write_text(
            "[default]\n"
            "region = us-east-1\n"
            # awscli ≥ 1.37 adds CRC32 trailers (aws-chunked) that s3rver does not understand.
            "request_checksum_calculation = when_required\n"
            "response_checksum_validation = when_required\n"
            "s3 =\n"
            "  max_concurrent_requests = 16\n"
            "  multipart_chunksize = 64MB\n"
            "  addressing_style = path\n"
        )
        creds = work / "aws.credentials"
        creds.write_text(
            f"[default]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n"
        )
        self.url = s3.url
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            "AWS_CONFIG_FILE": str(conf),
            "AWS_SHARED_CREDENTIALS_FILE": str(creds),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    @staticmethod
    def command(url: str, src: Path, bucket: str, prefix: str = "") -> list[str]:
        dest = f"s3://{bucket}/{prefix}".rstrip("/") + "/"
        return [
            str(AWS),
            "s3",
            "sync",
            str(src),
            dest,
            "--endpoint-url",
            url,
            "--only-show-errors",
            "--no-progress",
        ]

    def copy(self, src: Path, bucket: str, prefix: str = "") -> bc.Timed:
        return _checked(bc.run_timed(self.command(self.url, src, bucket, prefix), self.env), "aws s3 sync")

    def startup_seconds(self) -> float:
        return bc.run_timed([str(AWS), "--version"], self.env).seconds


def _checked(t: bc.Timed, what: str) -> bc.Timed:
    if t.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {t.returncode}:\n{t.output[-4000:]}")
    return t


# -- tunelab ---------------------------------------------------------------------------------------
class TunelabService:
    """``python -m tunelab.datasets`` on a free port, storing into ``bucket`` of the s3rver."""

    def __init__(self, s3: bc.S3rver, bucket: str, work: Path) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.log = work / "service.log"

    def start(self) -> TunelabService:
        port = bc.free_port()
        self.work.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "TUNELAB_DATA_DIR": str(self.work / "data"),
            "TUNELAB_PORT": str(port),
            "TUNELAB_METRICS_PORT": "0",
            "TUNELAB_STORE_URL": f"s3://{self.bucket}",
            "TUNELAB_S3_ENDPOINT": self.s3.endpoint,
            "TUNELAB_S3_ACCESS_KEY": self.s3.access_key,
            "TUNELAB_S3_SECRET_KEY": self.s3.secret_key,
            "TUNELAB_S3_SECURE": "false",
            "TUNELAB_LOG_LEVEL": "warning",
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tunelab.datasets"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.address = f"127.0.0.1:{port}"
        self._wait_serving()
        return self

    def _wait_serving(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        channel = open_channel(self.address)
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the datasets service exited with {self.proc.returncode}:\n{bc.tail(self.log)}"
                    )
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        finally:
            channel.close()
        raise TimeoutError(f"the datasets service is not SERVING after {timeout}s:\n{bc.tail(self.log)}")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return bc.proc_cpu_seconds(self.proc.pid)

    def client(self, cache_dir: Path) -> tuple[DatasetClient, grpc.Channel, StubTimer]:
        channel = open_channel(self.address)
        client = DatasetClient(channel, cache_dir, address=self.address)
        timer = StubTimer(client.stub)
        client.stub = timer  # type: ignore[assignment]
        return client, channel, timer

    def stop(self) -> None:
        bc.stop_process(self.proc)


class StubTimer:
    """Wraps a gRPC stub and records (start, end) of every call, to split push into phases."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.calls: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._stub, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls[name].append((t0, time.perf_counter()))

        return timed

    def reset(self) -> None:
        self.calls.clear()

    def push_phases(self, started: float, ended: float) -> dict[str, float]:
        """hash (walk + sha256, client) → StartUpload → UploadBlobs streams → Commit (verify, READY)."""
        start = self.calls["StartUpload"][-1]
        commit = self.calls["CommitDatasetVersion"][-1]
        uploads = self.calls.get("UploadBlobs", [])
        out = {
            "hash_s": start[0] - started,
            "start_upload_s": start[1] - start[0],
            "upload_s": (max(e for _, e in uploads) - min(s for s, _ in uploads)) if uploads else 0.0,
            "commit_s": commit[1] - commit[0],
        }
        out["other_s"] = (ended - started) - sum(out.values())
        return {k: round(v, 3) for k, v in out.items()}


class TunelabRun:
    """What one round measures of tunelab (timings, CPU, phases)."""

    def __init__(self, service: TunelabService, work: Path) -> None:
        self.service = service
        self.work = work
        self.client, self.channel, self.timer = service.client(work / "push-cache")
        self.client.create(DATASET, pb.Source(upload=pb.UploadSource()))

    def push(self, folder: Path) -> dict[str, Any]:
        """One ``push``; on a gRPC error returns the time to failure and the error instead."""
        self.timer.reset()
        cpu0, svc0, read0 = bc.self_cpu_seconds(), self.service.cpu_seconds(), bc.proc_read_chars()
        t0 = time.perf_counter()
        error = ""
        try:
            version = self.client.push(DATASET, folder)
        except grpc.RpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
        t1 = time.perf_counter()
        cpu1, svc1, read1 = bc.self_cpu_seconds(), self.service.cpu_seconds(), bc.proc_read_chars()
        out: dict[str, Any] = {
            "seconds": t1 - t0,
            "client_cpu_s": cpu1 - cpu0,
            "service_cpu_s": svc1 - svc0,
            "client_read_bytes": read1 - read0,
            "error": error,
        }
        if error:
            return out
        if version.state != pb.DatasetVersion.State.STATE_READY:
            raise RuntimeError(f"push ended in state {version.state}, not READY: {version}")
        out.update(phases=self.timer.push_phases(t0, t1), version=version.name, file_count=version.file_count)
        return out

    def pull(self, cache: Path, target: Path) -> dict[str, Any]:
        client, channel, _ = self.service.client(cache)
        try:
            cpu0, svc0 = bc.self_cpu_seconds(), self.service.cpu_seconds()
            t0 = time.perf_counter()
            result = client.pull(DATASET, target)
            t1 = time.perf_counter()
            cpu1, svc1 = bc.self_cpu_seconds(), self.service.cpu_seconds()
        finally:
            channel.close()
        return {
            "seconds": t1 - t0,
            "client_cpu_s": cpu1 - cpu0,
            "service_cpu_s": svc1 - svc0,
            "files": result.files,
            "bytes": result.bytes,
            "bytes_fetched": result.bytes_fetched,
        }

    def close(self) -> None:
        self.channel.close()


# -- one round ------------------------------------------------------------------------------------
def one_round(index: int, folder: Folder, work: Path, log: Any, errors: list[str]) -> dict[str, float]:
    order = list(TOOLS[index % 3 :] + TOOLS[: index % 3])
    buckets = [f"{tool}-r{index + 1}" for tool in TOOLS] + [f"{tool}-small-r{index + 1}" for tool in TOOLS]
    s3 = bc.S3rver(work / "s3", buckets).start()
    rclone, aws = Rclone(s3, work), AwsCli(s3, work)
    services = [
        TunelabService(s3, f"tunelab-r{index + 1}", work / "tunelab"),
        TunelabService(s3, f"tunelab-small-r{index + 1}", work / "tunelab-small"),
    ]
    m: dict[str, float] = {}
    try:
        for svc in services:
            svc.start()
        tl = TunelabRun(services[0], work / "tunelab")
        tl_small = TunelabRun(services[1], work / "tunelab-small")
        total_mb = folder.bytes / 1e6
        small_mb = folder.small_bytes / 1e6
        log(f"round {index + 1}: order {', '.join(order)}; s3rver at {s3.endpoint}")

        def external(tool: Rclone | AwsCli, key: str, src: Path, bucket: str, mb: float) -> None:
            s0 = s3.cpu_seconds()
            t = tool.copy(src, bucket)
            m[f"{tool.name}_{key}_s"] = t.seconds
            m[f"{tool.name}_{key}_cpu_s"] = t.cpu_seconds
            m[f"{tool.name}_{key}_s3rver_cpu_s"] = s3.cpu_seconds() - s0
            if mb:
                m[f"{tool.name}_{key}_mb_s"] = mb / t.seconds
            log(
                f"  {tool.name:8s} {key:8s} {t.seconds:7.2f} s  cpu {t.cpu_seconds:6.2f} s"
                + (f"  {mb / t.seconds:6.1f} MB/s" if mb else "")
            )

        def tunelab(run: TunelabRun, key: str, src: Path, mb: float) -> None:
            if key == "resync" and not m.get("tunelab_first_ready"):
                log(f"  {'tunelab':8s} {key:8s} skipped: no READY first version")
                return
            s0 = s3.cpu_seconds()
            r = run.push(src)
            if r["error"]:
                # Recorded as a failure (no time, no throughput). Then do what a user would: run
                # the same push again, which resumes (blobs already stored are not sent again).
                m[f"tunelab_{key}_failed_after_s"] = r["seconds"]
                errors.append(
                    f"round {index + 1} tunelab {key}: push failed after {r['seconds']:.1f} s: {r['error']}"
                )
                log(f"  {'tunelab':8s} {key:8s} FAILED after {r['seconds']:.2f} s: {r['error']}")
                retry = run.push(src)
                m[f"tunelab_{key}_retry_s"] = retry["seconds"]
                m[f"tunelab_{key}_with_retry_s"] = r["seconds"] + retry["seconds"]
                if mb:
                    m[f"tunelab_{key}_with_retry_mb_s"] = mb / (r["seconds"] + retry["seconds"])
                if retry["error"]:
                    errors.append(f"round {index + 1} tunelab {key}: the retry failed too: {retry['error']}")
                    log(f"  tunelab  {key:8s} retry FAILED after {retry['seconds']:.2f} s: {retry['error']}")
                    return
                log(f"  tunelab  {key:8s} retry (resume) {retry['seconds']:7.2f} s, READY  {retry['phases']}")
                m[f"tunelab_{key}_ready"] = 1.0
                return
            m[f"tunelab_{key}_ready"] = 1.0
            m[f"tunelab_{key}_s"] = r["seconds"]
            m[f"tunelab_{key}_cpu_s"] = r["client_cpu_s"] + r["service_cpu_s"]
            m[f"tunelab_{key}_client_cpu_s"] = r["client_cpu_s"]
            m[f"tunelab_{key}_service_cpu_s"] = r["service_cpu_s"]
            m[f"tunelab_{key}_client_read_bytes"] = r["client_read_bytes"]
            m[f"tunelab_{key}_s3rver_cpu_s"] = s3.cpu_seconds() - s0
            if mb:
                m[f"tunelab_{key}_mb_s"] = mb / r["seconds"]
            for name, value in r["phases"].items():
                m[f"tunelab_{key}_phase_{name}"] = value
            log(
                f"  tunelab  {key:8s} {r['seconds']:7.2f} s"
                f"  cpu {r['client_cpu_s']:6.2f}+{r['service_cpu_s']:.2f} s"
                + (f"  {mb / r['seconds']:6.1f} MB/s" if mb else "")
                + f"  {r['phases']}"
            )
            if r["file_count"] != (folder.files if key != "small" else folder.small_files):
                raise RuntimeError(f"tunelab {key}: the version has {r['file_count']} files")

        def step(tool: str, key: str) -> None:
            if key == "first":
                src, mb, suffix = folder.root, total_mb, ""
            elif key == "resync":
                src, mb, suffix = folder.root, 0.0, ""
            else:
                src, mb, suffix = folder.small_dir, small_mb, "-small"
            bucket = f"{tool}{suffix}-r{index + 1}"
            if tool == "rclone":
                external(rclone, key, src, bucket, mb)
            elif tool == "aws":
                external(aws, key, src, bucket, mb)
            else:
                tunelab(tl_small if key == "small" else tl, key, src, mb)

        for key in ("first", "resync", "small"):
            for tool in order:
                step(tool, key)

        for tool in ("rclone", "aws"):
            count = s3.object_count(f"{tool}-r{index + 1}")
            if count != folder.files:
                raise RuntimeError(f"{tool}: s3rver holds {count} objects, expected {folder.files}")

        # Materialize: a new folder with an empty client cache, then another with the cache warm.
        cache = work / "pull-cache"
        for key, target in (("materialize_first", work / "m1"), ("materialize_second", work / "m2")):
            if not m.get("tunelab_first_ready"):
                log(f"  {'tunelab':8s} {key:18s} skipped: no READY version")
                break
            r = tl.pull(cache, target)
            m[f"tunelab_{key}_s"] = r["seconds"]
            m[f"tunelab_{key}_mb_s"] = total_mb / r["seconds"]
            m[f"tunelab_{key}_cpu_s"] = r["client_cpu_s"] + r["service_cpu_s"]
            m[f"tunelab_{key}_bytes_fetched"] = r["bytes_fetched"]
            log(
                f"  tunelab  {key:18s} {r['seconds']:7.2f} s"
                f"  cpu {r['client_cpu_s']:6.2f}+{r['service_cpu_s']:.2f} s"
                f"  {total_mb / r['seconds']:6.1f} MB/s  fetched {r['bytes_fetched'] / 1e6:.1f} MB"
            )
            if r["files"] != folder.files or r["bytes"] != folder.bytes:
                raise RuntimeError(f"materialize gave {r['files']} files / {r['bytes']} bytes")
        if "tunelab_materialize_second_s" in m:
            _check_same(folder.root, work / "m2")

        # Ratios within the round (same conditions), medians are taken over rounds.
        def ratio(a: str, b: str) -> float | None:
            return m[a] / m[b] if a in m and b in m and m[b] else None

        for tool in TOOLS:
            m[f"{tool}_resync_ratio"] = ratio(f"{tool}_resync_s", f"{tool}_first_s")  # type: ignore[assignment]
        if "tunelab_first_s" not in m and "tunelab_first_with_retry_s" in m:
            # The first prewarm failed and was retried: compare with the time it took in all.
            m["tunelab_resync_ratio"] = ratio("tunelab_resync_s", "tunelab_first_with_retry_s")  # type: ignore[assignment]
            m["tunelab_resync_ratio_vs_first_with_retry"] = 1.0
        for tool in TOOLS:
            m[f"{tool}_small_files_time_share"] = ratio(f"{tool}_small_s", f"{tool}_first_s")  # type: ignore[assignment]
            if f"{tool}_small_s" in m:
                m[f"{tool}_small_files_per_s"] = folder.small_files / m[f"{tool}_small_s"]
        m["tunelab_materialize_speedup"] = ratio(
            "tunelab_materialize_first_s", "tunelab_materialize_second_s"
        )  # type: ignore[assignment]
        m["tunelab_vs_rclone_throughput"] = ratio("tunelab_first_mb_s", "rclone_first_mb_s")  # type: ignore[assignment]
        m["tunelab_vs_aws_throughput"] = ratio("tunelab_first_mb_s", "aws_first_mb_s")  # type: ignore[assignment]
        m["tunelab_vs_rclone_small_files"] = ratio("tunelab_small_files_per_s", "rclone_small_files_per_s")  # type: ignore[assignment]
        if "tunelab_first_with_retry_mb_s" in m:
            m["tunelab_vs_rclone_throughput_with_retry"] = ratio(
                "tunelab_first_with_retry_mb_s", "rclone_first_mb_s"
            )  # type: ignore[assignment]
        tl.close()
        tl_small.close()
        return m
    except BaseException:
        for svc in services:
            if svc.log.exists():
                log(f"--- {svc.log} (last lines) ---\n{bc.tail(svc.log, 60)}")
        if s3.log is not None:
            log(f"--- s3rver log (last lines) ---\n{bc.tail(s3.log, 30)}")
        raise
    finally:
        for svc in services:
            svc.stop()
        s3.stop(remove=True)
        for name in ("tunelab", "tunelab-small", "pull-cache", "m1", "m2"):
            shutil.rmtree(work / name, ignore_errors=True)
        for p in work.glob(".m*"):
            shutil.rmtree(p, ignore_errors=True)


def _check_same(src: Path, dst: Path) -> None:
    """Sizes of every file equal (content was sha256-verified by the pull itself)."""
    a = {p.relative_to(src).as_posix(): p.stat().st_size for p in src.rglob("*") if p.is_file()}
    b = {p.relative_to(dst).as_posix(): p.stat().st_size for p in dst.rglob("*") if p.is_file()}
    b.pop(".tunelab-manifest.json", None)
    if a != b:
        raise RuntimeError(f"materialized folder differs from the source ({len(a)} vs {len(b)} files)")


# -- main -----------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--size-scale", type=float, default=1.0, help="shrink the folder (e.g. 0.02 for a quick check)"
    )
    ap.add_argument("--repeat", type=int, default=1, help="rounds; metrics are medians over rounds")
    ap.add_argument("--work-dir", type=Path, default=None, help="scratch space (default: a temp dir)")
    args = ap.parse_args()
    if args.size_scale <= 0 or args.repeat < 1:
        ap.error("--size-scale must be > 0 and --repeat ≥ 1")

    def log(msg: str) -> None:
        print(msg, flush=True)

    for tool, path in (("rclone", Path(RCLONE)), ("aws", AWS), ("s3rver", bc.S3RVER)):
        if not path.exists():
            log(f"{tool} is missing at {path}: run `make setup` (rclone: apt-get install rclone)")
            return 2

    spec = Spec.scaled(args.size_scale)
    root = DATA_ROOT / ("prewarm" if args.size_scale == 1.0 else f"prewarm-x{args.size_scale:g}")
    planned = spec.large_count * spec.large_bytes + spec.small_count * (spec.small_min + spec.small_max) // 2
    need = planned * 9 + 1024**3  # data + 3 tools + small copies + spool + blob cache + 2 materialized
    free = shutil.disk_usage(DATA_ROOT.parent).free
    if free < need:
        log(f"not enough free disk: {free / 1e9:.1f} GB free, about {need / 1e9:.1f} GB needed")
        return 2

    t0 = time.perf_counter()
    folder, made = ensure_folder(root, spec)
    log(
        f"data: {folder.files} files, {folder.bytes / 1e6:.1f} MB at {root}"
        f" ({'generated in %.1f s' % (time.perf_counter() - t0) if made else 'reused'})"
    )

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tunelab-bench-prewarm-"))
    work.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, float]] = []
    errors: list[str] = []
    aws_startup = None
    try:
        aws_startup = AwsCli(bc.S3rver(work / "unused", []), work).startup_seconds()
        for i in range(args.repeat):
            rounds.append(one_round(i, folder, work, log, errors))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    keys = list(dict.fromkeys(k for r in rounds for k in r))
    med: dict[str, Any] = {k: bc.median(r.get(k) for r in rounds) for k in keys}
    for k in (
        "tunelab_vs_rclone_throughput",
        "tunelab_vs_rclone_small_files",
        "tunelab_resync_ratio",
        "tunelab_materialize_speedup",
    ):
        med.setdefault(k, None)
    metrics: dict[str, Any] = {"data": folder.as_dict(), "repeat": args.repeat}
    metrics.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in med.items()})
    metrics["errors"] = errors
    metrics["aws_startup_s"] = bc.rounded(aws_startup)
    metrics["commands"] = {
        "rclone": bc.repo_relative(shlex.join(Rclone.command(folder.root, "rclone-r1"))),
        "aws": bc.repo_relative(
            shlex.join(AwsCli.command("http://127.0.0.1:<s3rver port>", folder.root, "aws-r1"))
        ),
        "tunelab": "DatasetClient(open_channel(addr), cache_dir).push('bench', <folder>)"
        " / .pull('bench', <dir>)",
    }
    if args.repeat > 1:
        metrics["rounds"] = [{k: bc.rounded(v, 4) for k, v in r.items()} for r in rounds]

    targets = {
        "throughput_vs_rclone": bc.Target(
            "tunelab_vs_rclone_throughput",
            ">=",
            1.0,
            med["tunelab_vs_rclone_throughput"],
            "tunelab first-prewarm MB/s over rclone copy's, same round",
        ),
        "small_files_vs_rclone": bc.Target(
            "tunelab_vs_rclone_small_files",
            ">=",
            1.0,
            med["tunelab_vs_rclone_small_files"],
            "small files must not be the slow part: files/s of the small/ folder alone",
        ),
        "reprewarm_ratio": bc.Target(
            "tunelab_resync_ratio",
            "<=",
            0.02,
            med["tunelab_resync_ratio"],
            "re-prewarm of the unchanged folder over the first prewarm",
        ),
        "materialize_speedup": bc.Target(
            "tunelab_materialize_speedup",
            ">=",
            10.0,
            med["tunelab_materialize_speedup"],
            "first materialize (empty cache) over second (warm cache)",
        ),
    }
    if med.get("tunelab_resync_ratio_vs_first_with_retry"):
        targets[
            "reprewarm_ratio"
        ].note += " (the first prewarm failed: its failed attempt + retry are the basis)"
    for t in targets.values():
        t.value = bc.rounded(t.value, 4)
    path = bc.write_result("prewarm", metrics, targets)

    def f(key: str, spec: str = ".2f") -> str:
        v = med.get(key)
        return "—" if v is None else format(v, spec)

    rows = [("tool", "first s", "MB/s", "CPU s", "re-sync s", "re-sync/first", "small/ s", "small share")]
    for tool in TOOLS:
        first = f(f"{tool}_first_s")
        if first == "—" and med.get(f"{tool}_first_failed_after_s") is not None:
            failed, retry = f(f"{tool}_first_failed_after_s", ".1f"), f(f"{tool}_first_retry_s", ".1f")
            first = f"FAILED at {failed} (+retry {retry})"
        rows.append(
            (
                tool,
                first,
                f(f"{tool}_first_mb_s", ".1f"),
                f(f"{tool}_first_cpu_s", ".1f"),
                f(f"{tool}_resync_s"),
                f(f"{tool}_resync_ratio", ".3f"),
                f(f"{tool}_small_s"),
                f(f"{tool}_small_files_time_share"),
            )
        )
    log("")
    log(bc.fmt_table(rows))
    log(
        f"\ntunelab materialize: first {f('tunelab_materialize_first_s')} s, "
        f"second {f('tunelab_materialize_second_s')} s (x{f('tunelab_materialize_speedup', '.1f')})"
    )
    for e in errors:
        log(f"error: {e}")
    for name, t in targets.items():
        log(
            f"target {name:22s} {t.metric} = {t.value} (want {t.op} {t.threshold:g}): "
            + ("met" if t.met else "MISSED")
        )
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
