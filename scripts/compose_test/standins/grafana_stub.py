"""Grafana stand-in: /api/health answers 200 only when the provisioning files parse."""

import http.server
import json
from pathlib import Path


def check() -> list[str]:
    problems = []
    for d in ("/etc/grafana/provisioning/datasources", "/etc/grafana/provisioning/dashboards"):
        if not any(Path(d).glob("*.yaml")):
            problems.append(f"no provisioning file in {d}")
    dashboards = list(Path("/etc/grafana/dashboards/tunelab").glob("*.json"))
    if not dashboards:
        problems.append("no dashboard in /etc/grafana/dashboards/tunelab")
    for f in dashboards:
        try:
            json.loads(f.read_text())
        except ValueError as exc:
            problems.append(f"{f}: {exc}")
    return problems


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        problems = check()
        body = json.dumps({"database": "ok" if not problems else "failing", "problems": problems}).encode()
        self.send_response(200 if self.path == "/api/health" and not problems else 503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


print("grafana stand-in: a health stub on :3000", check() or "provisioning files parse", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", 3000), Handler).serve_forever()
