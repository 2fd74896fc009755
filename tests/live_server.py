"""A real ``mediagen-server`` process for tests that drive it with outside clients.

Tests of grpcurl and the Node client must talk to the server the way a user
does: a separate process, started by its console script, configured only through
the environment. The server listens on port 0 (so parallel runs never collide)
and the port is read from its "serving" log line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MEDIA_KEYS = ("VIDEO", "SPEECH", "MUSIC", "SOUND_EFFECT", "IMAGE")


def server_command() -> list[str]:
    script = BIN / "mediagen-server"
    if script.exists():
        return [str(script)]
    found = shutil.which("mediagen-server")
    if found:
        return [found]
    return [sys.executable, "-m", "server.main"]


class LiveServer:
    """``with LiveServer(tmp_path) as srv:`` → ``srv.address`` is "127.0.0.1:<port>"."""

    def __init__(self, tmp_path: Path, *, mock_latency: float = 0.2, **settings: str) -> None:
        self.tmp_path = tmp_path
        self.log_path = tmp_path / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAGEN_")}
        env.update(
            MEDIAGEN_LISTEN="127.0.0.1:0",
            MEDIAGEN_DATA_DIR=str(tmp_path / "data"),
            MEDIAGEN_MOCK_LATENCY=str(mock_latency),
            MEDIAGEN_LOG_FORMAT="json",
            MEDIAGEN_LOG_LEVEL="info",
            MEDIAGEN_SHUTDOWN_GRACE="1",
        )
        # Vendor keys in the caller's environment must not route jobs to real vendors.
        for media in MEDIA_KEYS:
            env[f"MEDIAGEN_DEFAULT_{media}_PROVIDER"] = "mock"
        env.update({f"MEDIAGEN_{k.upper()}": v for k, v in settings.items()})
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 60.0) -> LiveServer:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                server_command(), cwd=self.tmp_path, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("event") == "serving" and entry.get("port"):
                    self.port = int(entry["port"])
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(f"mediagen-server exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mediagen-server did not start within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
