"""The README's "Image-to-video from a local file" commands, run as written against a live
server on the mock providers (the CLI and grpcurl, as a user runs them).

The only changes made to the text: ``localhost:50051`` becomes the test server's address
(and ``MEDIAGEN_SERVER`` points the CLI at it), and ``.venv/bin/`` is this interpreter's
bin folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil

import pytest

from clients import MediagenClient
from providers.mock.media import probe
from tests.live_server import BIN, ROOT, LiveServer
from tests.test_grpcurl import json_documents, run_walkthrough

SECTION = "Image-to-video from a local file"


def section_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(SECTION)}\n(.*?)(?=^## )", readme, re.S | re.M)
    assert match, f"README.md has no '## {SECTION}' section"
    (block,) = re.findall(r"^```sh\n(.*?)^```", match.group(1), re.S | re.M)
    commands: list[str] = []
    current = ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line + "\n"
        if not line.endswith("\\"):
            commands.append(current.rstrip("\n").replace(".venv/bin/", f"{BIN}/"))
            current = ""
    return commands


@pytest.mark.skipif(shutil.which("jq") is None and not os.environ.get("CI"), reason="jq is not installed")
def test_readme_image_to_video_commands(tmp_path, monkeypatch):
    commands = section_commands()
    assert any("--image ./first-frame.png -o out.mp4" in c for c in commands)
    workdir = tmp_path / "work"
    workdir.mkdir()
    with LiveServer(tmp_path) as server:
        monkeypatch.setenv("MEDIAGEN_SERVER", server.address)
        results = run_walkthrough(commands, server.address, workdir)
        for result in results:
            assert result["rc"] == 0, f"{result['command']}\nexit {result['rc']}\n{result['stderr']}\n{server.log()}"

        frame = (workdir / "first-frame.png").read_bytes()
        info = probe(workdir / "first-frame.png")
        assert (info.content_type, info.width, info.height) == ("image/png", 1280, 720)
        video = probe(workdir / "out.mp4")
        assert video.content_type == "video/mp4" and video.duration_seconds > 0

        uploaded = next(r for r in results if "mediagen upload" in r["command"])
        match = re.match(r"asset (asset_[0-9a-f]{32})  image/png, .*1280x720  sha256 ([0-9a-f]{64})", uploaded["stdout"])
        assert match, uploaded["stdout"]
        assert match.group(2) == hashlib.sha256(frame).hexdigest()

        generated = next(r for r in results if "VideoService/GenerateVideo" in r["command"])
        (answer,) = json_documents(generated["stdout"])
        assert answer["job"]["state"] == "JOB_STATE_QUEUED"
        with MediagenClient(server.address) as client:
            job = client.wait("video", answer["job"]["id"])
            assert job.artifacts[0].metadata["inputSha256"] == hashlib.sha256(frame).hexdigest()
            # The CLI's own job took the same frame (inline: the file is under 4 MiB).
            cli_job = next(j for j in client.list_jobs("video") if j.id != job.id)
            assert cli_job.artifacts[0].metadata["inputSha256"] == hashlib.sha256(frame).hexdigest()
