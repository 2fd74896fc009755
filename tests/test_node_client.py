"""The Node/TypeScript client (clients/node) against a live server.

Installs the client's locked dependencies (``npm ci``, skipped while
node_modules matches the lockfile), builds it (types from the protos, then tsc)
and runs its ``node --test`` suite against a ``mediagen-server`` subprocess on
the mock providers. Without node or npm the test is skipped, except in CI.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from tests.live_server import ROOT, LiveServer

NODE_CLIENT = ROOT / "clients" / "node"
STAMP = NODE_CLIENT / "node_modules" / ".mediagen-installed"


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm:
        return node, npm
    message = "node and npm are needed for the Node client test (install Node.js 20+)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; in CI their absence is a failure")
    pytest.skip(message)


def _run(args: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=NODE_CLIENT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def _install(npm: str) -> None:
    """``npm ci`` unless node_modules was installed from this very lockfile."""
    lock = hashlib.sha256((NODE_CLIENT / "package-lock.json").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == lock:
        return
    _run([npm, "ci", "--omit=optional", "--no-audit", "--no-fund"], timeout=600)
    STAMP.write_text(lock)


@pytest.mark.timeout(900)
def test_node_client_against_a_live_server(tmp_path):
    node, npm = _tools()
    _install(npm)
    _run([npm, "run", "build"], timeout=180)
    with LiveServer(tmp_path) as server:
        env = dict(os.environ, MEDIAGEN_TEST_ADDRESS=server.address)
        done = subprocess.run(
            [node, "--test", "dist/test/integration.test.js"],
            cwd=NODE_CLIENT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        log = server.log()
    report = f"{done.stdout}\n{done.stderr}\n--- server log ---\n{log[-4000:]}"
    assert done.returncode == 0, report
    assert "# fail 0" in done.stdout, report
    passed = [line for line in done.stdout.splitlines() if line.startswith("# pass ")]
    assert passed and int(passed[0].split()[-1]) >= 10, report
