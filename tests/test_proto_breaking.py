"""`buf breaking` against protos/baseline.binpb: passes today, and really catches a break.

`make lint` runs the same check; these tests prove it bites, on a copy of the
contract with a released field renumbered.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.live_server import ROOT

BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
BASELINE = "protos/baseline.binpb"


@pytest.fixture
def buf() -> Path:
    if not BUF.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{BUF} is missing (`make lint` installs it)")
        pytest.skip("buf is not installed: run `make lint` once")
    return BUF


def _breaking(buf: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), "breaking", "protos", "--against", BASELINE, "--error-format", "json"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _copy_contract(tmp_path: Path) -> Path:
    for name in ("buf.yaml", "protos", "third_party"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy2(source, tmp_path / name)
    return tmp_path


def test_contract_has_no_breaking_change_against_the_baseline(buf):
    done = _breaking(buf, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_released_file_still_exists(buf):
    done = subprocess.run([str(buf), "ls-files", BASELINE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    released = done.stdout.split()
    assert "mediagen/v1/common.proto" in released
    for name in released:
        assert (ROOT / "protos" / name).exists(), f"{name} was released and is gone"


def test_renumbering_a_released_field_is_caught(buf, tmp_path):
    root = _copy_contract(tmp_path)
    common = root / "protos" / "mediagen" / "v1" / "common.proto"
    text = common.read_text()
    assert "  string sha256 = 5;\n" in text
    common.write_text(text.replace("  string sha256 = 5;\n", "  string sha256 = 99;\n"))
    done = _breaking(buf, root)
    assert done.returncode != 0
    assert "FIELD_NO_DELETE" in done.stdout and "sha256" in done.stdout, done.stdout + done.stderr


def test_adding_a_field_is_fine(buf, tmp_path):
    root = _copy_contract(tmp_path)
    common = root / "protos" / "mediagen" / "v1" / "common.proto"
    text = common.read_text()
    marker = "message Artifact {\n"
    assert marker in text
    common.write_text(text.replace(marker, marker + "  // Added later.\n  string added_later = 900;\n"))
    done = _breaking(buf, root)
    assert done.returncode == 0, done.stdout + done.stderr
