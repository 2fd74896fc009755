"""What every figure shares: processes pinned to a core, RSS, statistics, the machine.

Layout of a measurement (see bench/README.md): the server under test (mediagen or
the bare baseline) runs in its own process pinned to CPU 0; the load generator
runs in another process pinned to CPU 1 (a 2-core machine: each side gets a whole
core, so the load generator can never starve the server, and the two servers are
measured under exactly the same conditions). The orchestrating process (this
package's ``__main__``) only spawns, waits and reads /proc.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPUS = "0"
CLIENT_CPUS = "1"


def cpus_for(spec: str) -> set[int]:
    """'0' / '1' / '0,1' → a CPU set restricted to the CPUs this machine has."""
    have = os.sched_getaffinity(0)
    wanted = {int(c) for c in spec.split(",") if c.strip() != ""}
    usable = wanted & have
    return usable or have


def pin(spec: str | None) -> None:
    """Pin the calling process (and the threads it will start) to ``spec``."""
    if spec and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, cpus_for(spec))


# --- memory ----------------------------------------------------------------------


def _status(pid: int | str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0]) * 1024
    except FileNotFoundError:
        pass
    return out


def rss(pid: int | str = "self") -> int:
    return _status(pid).get("VmRSS", 0)


def peak_rss(pid: int | str = "self") -> int:
    return _status(pid).get("VmHWM", 0)


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time the process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def reset_peak(pid: int | str = "self") -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs '5'); False when not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


MIB = 1024 * 1024


# --- statistics ---------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


# --- child processes ---------------------------------------------------------------


class Child:
    """A ``python -m bench.<module>`` child: pinned, speaking JSON lines on stdout.

    The first stdout line a server child prints is ``{"ready": ..., "port": N}``;
    a load-generator child prints one JSON object, its result, and exits.
    """

    def __init__(self, module: str, args: list[str], *, cpus: str | None, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        cmd = [sys.executable, "-m", module, *args]
        if cpus:
            cmd += ["--cpus", cpus]
        self.log_path = log
        self._log = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_json(self, timeout: float = 600.0) -> dict[str, Any]:
        """The next JSON line from the child (servers: their ready line)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.describe()} exited ({self.proc.poll()}) without answering{self._tail()}")
            line = line.strip()
            if line.startswith(b"{"):
                return json.loads(line)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.describe()} did not answer")

    def result(self, timeout: float = 900.0) -> dict[str, Any]:
        """Wait for a load generator's one JSON result."""
        out = self.read_json(timeout)
        self.proc.wait(timeout)
        return out

    def describe(self) -> str:
        return " ".join(self.proc.args[2:4]) if isinstance(self.proc.args, list) else str(self.proc.args)

    def _tail(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()[-15:]
        return "\n  " + "\n  ".join(lines)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def emit(obj: dict[str, Any]) -> None:
    """A child's JSON line to its parent."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- results -------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a figure, its baseline, their ratio and the target."""

    figure: str
    value: float | None
    unit: str
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "note": self.note,
            "runs": self.runs,
            "baseline_runs": self.baseline_runs,
        }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "load_average_at_start": load_average(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": v("grpcio"),
        "protobuf": v("protobuf"),
        "httpx": v("httpx"),
    }
