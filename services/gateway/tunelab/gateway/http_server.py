"""Runs the FastAPI app under uvicorn in a thread of its own (uvloop and httptools where
installed), so the process's main thread can own the gRPC server and the signals."""

from __future__ import annotations

import importlib.util
import logging
import threading
import time

import uvicorn

from tunelab.gateway.api.entry import FrontDoorASGI

log = logging.getLogger(__name__)


class HttpServer:
    def __init__(
        self, app: FrontDoorASGI, host: str, port: int, *, fast: bool = True, grace_s: float = 10.0
    ) -> None:
        fast = fast and all(importlib.util.find_spec(m) for m in ("uvloop", "httptools"))
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop" if fast else "asyncio",
            http="httptools" if fast else "h11",
            lifespan="off",
            proxy_headers=False,
            access_log=False,
            log_config=None,
            timeout_keep_alive=75,
            timeout_graceful_shutdown=max(1, round(grace_s)),
            backlog=4096,
        )
        self.server = uvicorn.Server(self.config)
        self.app = app.app  # the FastAPI app (routes, OpenAPI)
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the HTTP server could not listen on {self.host}:{self.port} (port taken?)")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        log.info("HTTP serving", extra={"address": f"{self.host}:{self.port}"})

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.config.timeout_graceful_shutdown or 10)
            self._thread = None
