"""Commits output mounts as new dataset versions: periodically while the command runs (so
checkpoints survive a lost machine) and once after it ends. An unchanged output is not
committed again. A commit holds the output's own files, not those of mounts nested inside it;
its snapshots are kept beside the staging tree, where the job does not see them."""

from __future__ import annotations

import threading
from pathlib import Path

from tunelab.cli.agent.mounts import Mount, nested, snapshot
from tunelab.cli.agent.reporter import Reporter
from tunelab.cli.clients.datasets import DatasetClient


def _short(version: str) -> str:
    parts = version.split("/")
    return f"{parts[1]}@{parts[3]}" if len(parts) == 4 else version


class Outputs:
    def __init__(
        self,
        client: DatasetClient,
        mounts: list[Mount],
        reporter: Reporter,
        provenance: dict[str, str],
        snapshots: Path,
    ) -> None:
        self.client, self.reporter, self.provenance = client, reporter, provenance
        self.mounts = [m for m in mounts if m.output]
        self.snapshots = snapshots
        self._nested = {m.spec_path: nested(m, mounts) for m in self.mounts}
        self._last: dict[str, str] = {}
        self._committed: set[str] = set()  # the mounts this attempt committed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def staging(self, m: Mount) -> Path:
        return self.snapshots / m.key

    def _snapshot(self, m: Mount) -> Path:
        snap = self.staging(m)
        snapshot(m.path, snap, self._nested[m.spec_path])
        return snap

    def baseline(self) -> None:
        """Remembers what the outputs hold at the start, so only changes are committed."""
        for m in self.mounts:
            self._last[m.spec_path] = self.client.manifest_of(self._snapshot(m)).digest()

    def commit(self, final: bool) -> int:
        """Commits every changed output; returns how many were committed."""
        done = 0
        with self._lock:
            for m in self.mounts:
                snap = self._snapshot(m)
                digest = self.client.manifest_of(snap).digest()
                if digest == self._last.get(m.spec_path):
                    if final and m.spec_path not in self._committed:
                        since = _short(m.start_version) if m.start_version else "the start (empty)"
                        self.reporter.say(f"{m.spec_path} is unchanged since {since}: nothing to commit")
                    continue
                kind = "final" if final else "periodic"
                v = self.client.push(m.dataset_id, snap, provenance={**self.provenance, "commit": kind})
                self._last[m.spec_path] = digest
                self._committed.add(m.spec_path)
                self.reporter.commit(m.spec_path, v.name, final)
                self.reporter.say(
                    f"committed {m.spec_path} as {_short(v.name)} ({kind}, {v.file_count} files)"
                )
                done += 1
        return done

    def start(self, interval_s: float) -> None:
        if not self.mounts or interval_s <= 0:
            return
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), daemon=True, name="outputs")
        self._thread.start()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.commit(final=False)
            except Exception as exc:  # noqa: BLE001 - any failure: the next period (or the end) tries again
                self.reporter.say(f"periodic commit of outputs failed, will retry: {exc}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
