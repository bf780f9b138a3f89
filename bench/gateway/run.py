"""Gateway benchmark: what a proxy adds in front of one fast fake OpenAI upstream, side by side in
one run on this machine: direct, through tunelab (``python -m tunelab.gateway``), through nginx
(Debian, a plain reverse proxy with upstream keep-alive) and through the LiteLLM proxy (PyPI, in
its own venv, 2 workers).

    make bench-gateway                          # 5 s per wrk run
    .venv/bin/python bench/gateway/run.py --duration 2 --skip-litellm   # a quick check

For each target, with wrk (Debian; a Lua script POSTs a completion request):
  non-streaming and streaming (8 SSE events) at 1 and 64 connections: requests/s, p50/p99;
  "added" latency = the target's p50/p99 minus the direct one's at 1 connection;
streaming time to first byte: median over sequential keep-alive requests (this process reads
the first body byte); buffering: with the upstream pausing 30 ms between events, the time from
the first to the last event at the client (a buffering proxy shows ~0).

Needs: apt-get install -y nginx wrk; bench/.venv-litellm with litellm[proxy] (made on first run).
Writes bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common as bc

HERE = Path(__file__).resolve().parent
LITELLM_VENV = bc.BENCH_DIR / ".venv-litellm"
MODEL = "fake"
BODY = '{"model":"fake","prompt":"hello","max_tokens":16}'
STREAM_BODY = '{"model":"fake","prompt":"hello","max_tokens":16,"stream":true}'
SLOW_BODY = '{"model":"fake","prompt":"slow","max_tokens":16,"stream":true}'


def lua_script(tmp: Path, body: str, name: str) -> Path:
    path = tmp / f"{name}.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{body}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Authorization"] = "Bearer sk-bench"\n'
    )
    return path


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, script: Path, conns: int, duration: float) -> dict[str, float | None]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{duration:g}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {
        m.group(1): float(m.group(2)) * UNITS[m.group(3)]
        for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": round(rps, 1),
        "p50_ms": pct.get("50"),
        "p99_ms": pct.get("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def first_byte_ms(port: int, path: str, body: str, n: int = 300) -> float:
    """Median time from sending a streaming request to reading the first bytes of its body, over
    sequential requests on one keep-alive connection (the first tenth is warm-up)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    times = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        first = resp.read1(65536)
        times.append((time.perf_counter() - start) * 1000)
        assert first, "empty stream"
        resp.read()
    conn.close()
    return round(statistics.median(times[n // 10 :]), 3)


def stream_spread_ms(port: int, path: str) -> float:
    """First-to-last event arrival at the client, upstream pausing 30 ms between 8 events."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST", path, SLOW_BODY, {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    )
    resp = conn.getresponse()
    arrivals = []
    while chunk := resp.read1(65536):
        if b'"text' in chunk or b'"content' in chunk:
            arrivals.append(time.perf_counter())
    conn.close()
    return round((arrivals[-1] - arrivals[0]) * 1000, 1) if len(arrivals) > 1 else 0.0


# -- the contenders -------------------------------------------------------------------------------
class Proc:
    def __init__(self, args: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = port
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        bc.wait_port(port, 120, self.proc)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)


def start_fake_upstream(tmp: Path, port: int, *flags: str) -> Proc:
    """``fake_upstream.py`` on ``port`` with ``flags`` (its --help lists them), logging into ``tmp``."""
    return Proc(
        [sys.executable, str(HERE / "fake_upstream.py"), "--port", str(port), *flags],
        port,
        tmp / "upstream.log",
    )


def start_tunelab(tmp: Path, upstream: int) -> Proc:
    from tunelab.common.grpc.channel import open_channel
    from tunelab.gateway.v1 import gateway_pb2 as pb
    from tunelab.gateway.v1 import gateway_pb2_grpc

    port, grpc_port = bc.free_port(), bc.free_port()
    env = {
        **os.environ,
        "TUNELAB_DATA_DIR": str(tmp / "tunelab"),
        "TUNELAB_HTTP_PORT": str(port),
        "TUNELAB_PORT": str(grpc_port),
        "TUNELAB_METRICS_PORT": "0",
        "TUNELAB_API_KEY_AUTH": "off",
        "TUNELAB_LOG_LEVEL": "warning",
    }
    proc = Proc([sys.executable, "-m", "tunelab.gateway"], port, tmp / "tunelab.log", env)
    bc.wait_port(grpc_port, 30)
    channel = open_channel(f"127.0.0.1:{grpc_port}")
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    dep = pb.Deployment(
        model_name=MODEL,
        base_model=pb.ModelSource(path=MODEL),
        max_in_flight=1024,
        upstream=pb.Upstream(vllm=pb.VllmUpstream(base_urls=[f"http://127.0.0.1:{upstream}"])),
    )
    stub.CreateDeployment(pb.CreateDeploymentRequest(deployment_id="bench", deployment=dep))
    for resp in stub.WatchDeployment(pb.WatchDeploymentRequest(name="deployments/bench"), timeout=60):
        if resp.deployment.state == pb.Deployment.STATE_READY:
            break
        if resp.deployment.state == pb.Deployment.STATE_FAILED:
            raise RuntimeError(resp.deployment.error)
    channel.close()
    return proc


NGINX_CONF = """
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  upstream fake {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def start_nginx(tmp: Path, upstream: int) -> Proc:
    port = bc.free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, upstream=upstream, port=port))
    return Proc(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
        port,
        tmp / "nginx.log",
    )


def ensure_litellm() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    return exe


def start_litellm(tmp: Path, upstream: int) -> Proc:
    exe = ensure_litellm()
    port = bc.free_port()
    conf = tmp / "litellm.yaml"
    conf.write_text(
        "model_list:\n  - model_name: fake\n    litellm_params:\n      model: openai/fake\n"
        f"      api_base: http://127.0.0.1:{upstream}/v1\n      api_key: fake\n"
        "litellm_settings:\n  drop_params: true\n  telemetry: false\n"
    )
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": "sk-bench"}
    return Proc(
        [str(exe), "--config", str(conf), "--port", str(port), "--host", "127.0.0.1", "--num_workers", "2"],
        port,
        tmp / "litellm.log",
        env,
    )


def measure(name: str, port: int, duration: float, tmp: Path) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v1/completions"
    plain, stream = lua_script(tmp, BODY, "plain"), lua_script(tmp, STREAM_BODY, "stream")
    wrk(url, plain, 8, 1)  # warm up pools and workers
    out: dict[str, Any] = {}
    for conns in (1, 64):
        out[f"plain_c{conns}"] = wrk(url, plain, conns, duration)
        out[f"stream_c{conns}"] = wrk(url, stream, conns, duration)
    out["stream_first_byte_ms"] = first_byte_ms(port, "/v1/completions", STREAM_BODY)
    out["stream_spread_ms"] = stream_spread_ms(port, "/v1/completions")
    print(
        f"{name:8s} "
        + "  ".join(
            f"{k}: {v['rps']} rps p50 {v['p50_ms']} ms" for k, v in out.items() if isinstance(v, dict)
        )
        + f"  ttfb {out['stream_first_byte_ms']} ms  spread {out['stream_spread_ms']} ms",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--skip-litellm", action="store_true")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is missing: apt-get install -y nginx wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    upstream_port = bc.free_port()
    upstream = start_fake_upstream(tmp, upstream_port, "--slow-chunk-delay-ms", "30")
    results: dict[str, Any] = {}
    try:
        results["direct"] = measure("direct", upstream_port, args.duration, tmp)
        for name, start in (("tunelab", start_tunelab), ("nginx", start_nginx), ("litellm", start_litellm)):
            if name == "litellm" and args.skip_litellm:
                continue
            proc = start(tmp, upstream_port)
            try:
                results[name] = measure(name, proc.port, args.duration, tmp)
            finally:
                proc.stop()
    finally:
        upstream.stop()
    write(results, args)


def write(results: dict[str, Any], args: argparse.Namespace) -> None:
    direct = results["direct"]
    metrics: dict[str, Any] = {"raw": results}
    for name, r in results.items():
        if name == "direct":
            continue
        metrics[name] = {
            "added_p50_ms_c1": bc.rounded(r["plain_c1"]["p50_ms"] - direct["plain_c1"]["p50_ms"]),
            "added_p99_ms_c1": bc.rounded(r["plain_c1"]["p99_ms"] - direct["plain_c1"]["p99_ms"]),
            "added_stream_p50_ms_c1": bc.rounded(r["stream_c1"]["p50_ms"] - direct["stream_c1"]["p50_ms"]),
            "rps_c1": r["plain_c1"]["rps"],
            "rps_c64": r["plain_c64"]["rps"],
            "stream_rps_c64": r["stream_c64"]["rps"],
            "stream_first_byte_ms": r["stream_first_byte_ms"],
            "added_stream_first_byte_ms": bc.rounded(
                r["stream_first_byte_ms"] - direct["stream_first_byte_ms"]
            ),
            "stream_spread_ms": r["stream_spread_ms"],
        }
    t = metrics["tunelab"]
    targets = {
        "added_p50_c1": bc.Target("tunelab added p50 at 1 connection (ms)", "<=", 1.0, t["added_p50_ms_c1"]),
        "vs_nginx_c64": bc.Target(
            "tunelab / nginx req/s at 64 connections",
            ">=",
            1 / 8,
            bc.rounded(t["rps_c64"] / metrics["nginx"]["rps_c64"]),
        ),
        "added_ttfb": bc.Target(
            "tunelab added streaming time to first byte (ms)", "<=", 1.0, t["added_stream_first_byte_ms"]
        ),
        "unbuffered": bc.Target(
            "tunelab first-to-last event spread (ms; upstream spreads 210)", ">=", 150, t["stream_spread_ms"]
        ),
    }
    if "litellm" in metrics:
        targets["vs_litellm_c64"] = bc.Target(
            "tunelab / LiteLLM req/s at 64 connections",
            ">=",
            20,
            bc.rounded(t["rps_c64"] / metrics["litellm"]["rps_c64"]),
        )
    path = bc.write_result("gateway", metrics, targets, {"settings": {"duration_s": args.duration}})
    print(f"wrote {path}")
    for key, target in targets.items():
        print(
            f"  {key}: {target.value} (target {target.op} {target.threshold:g})",
            "met" if target.met else "MISSED",
        )


if __name__ == "__main__":
    main()
