"""`python -m bench --smoke` runs every figure once, tiny, and writes its JSON.

No assertion on times: benchmarks measure (`make bench`), tests only check
that the benchmark still runs against the current server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {"getjob", "download", "inflight", "watch", "e2e", "startup"}


@pytest.mark.timeout(180)
def test_bench_smoke_completes_and_writes_json(tmp_path):
    out = tmp_path / "smoke.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--quiet", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failed"] == {}
    assert set(result["details"]) == FIGURES
    assert {"cpu_count", "cpu_model", "memory_bytes", "python", "grpcio", "protobuf"} <= set(result["machine"])
    figures = [row["figure"] for row in result["rows"]]
    assert any(f.startswith("GetJob") for f in figures)
    assert any(f.startswith("Download") for f in figures)
    for row in result["rows"]:
        assert {"figure", "value", "baseline", "ratio", "target", "met"} <= set(row)
        if row["value"] is None:  # only a figure that says why it was skipped
            assert row["note"].startswith("skipped"), row
    # The table went to stdout too.
    assert "figure" in run.stdout and "baseline" in run.stdout
