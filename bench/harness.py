"""Starting servers and load generators for a figure, and cleaning up after them."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import CLIENT_CPUS, SERVER_CPUS, Child


class Harness:
    """Where a run keeps its files (``workdir``) and how it starts processes."""

    def __init__(self, workdir: Path, *, server_cpus: str = SERVER_CPUS, client_cpus: str = CLIENT_CPUS,
                 verbose: bool = False) -> None:
        self.workdir = workdir
        self.server_cpus = server_cpus
        self.client_cpus = client_cpus
        self.verbose = verbose
        self._count = 0
        workdir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.workdir / name

    def _spec_file(self, name: str, spec: dict[str, Any]) -> Path:
        self._count += 1
        path = self.workdir / f"{self._count:03d}-{name}.json"
        path.write_text(json.dumps(spec))
        return path

    @contextlib.contextmanager
    def server(self, kind: str, spec: dict[str, Any], *, cpus: str | None = None,
               env: dict[str, str] | None = None) -> Iterator[tuple[Child, dict[str, Any]]]:
        """Start a server child (mediagen, bare, vendor or s3); yield it and its ready line."""
        module = {"mediagen": "bench.serve", "bare": "bench.bare", "vendor": "bench.vendor", "s3": "bench.s3emu"}[kind]
        spec_path = self._spec_file(kind, spec)
        spawned = time.time()
        child = Child(module, ["--spec", str(spec_path)], cpus=cpus or self.server_cpus, env=env,
                      log=self.workdir / f"{kind}.log")
        try:
            ready = child.read_json(timeout=300)
            ready["spawned_at"] = spawned
            yield child, ready
        finally:
            child.stop()

    def client(self, command: str, spec: dict[str, Any], *, cpus: str | None = None,
               timeout: float = 900.0) -> dict[str, Any]:
        """Run one load-generator process to the end and return its result."""
        child = Child("bench.client", [command, "--spec", json.dumps(spec)], cpus=cpus or self.client_cpus,
                      log=self.workdir / "client.log")
        try:
            return child.result(timeout)
        finally:
            child.stop()

    @contextlib.contextmanager
    def client_background(self, command: str, spec: dict[str, Any], *, cpus: str | None = None) -> Iterator[Child]:
        child = Child("bench.client", [command, "--spec", json.dumps(spec)], cpus=cpus or self.client_cpus,
                      log=self.workdir / "client.log")
        try:
            yield child
        finally:
            child.stop()

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"  · {message}", flush=True)
