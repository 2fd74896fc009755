"""The ``mediagen`` CLI, run in-process (blocking client) against a live server."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from clients.cli import main
from clients.progress import ProgressBar, describe_progress
from mediagen.v1 import common_pb2
from tests.test_client_support import assert_media_file, serve_in_thread

SLOW = "mock_latency_seconds=0.3"


@pytest.fixture
def address(settings):
    with serve_in_thread(settings) as address:
        yield address


@pytest.fixture
def run(address, capsys, monkeypatch, tmp_path):
    """Run ``mediagen --server ADDRESS ARGS...`` in ``tmp_path/work``: (exit code, stdout, stderr)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--server", address, *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_video_shows_progress_downloads_and_reports(run, tmp_path):
    out = tmp_path / "fox.mp4"

    code, stdout, stderr = run("video", "a red fox", "--duration", "1", "--option", SLOW, "-o", str(out))

    assert code == 0
    assert_media_file(out.read_bytes(), "video/mp4")
    assert str(out) in stdout and _sha256(out) in stdout
    assert "1.00 s" in stdout and "640x360" in stdout and "cost" in stdout
    # Not a terminal here: one line per change, phases and percentages visible.
    assert "generating" in stderr and "%" in stderr and "\r" not in stderr
    assert "fox.mp4" in stderr  # the download's own progress line


def test_json_output_is_proto3_json_without_a_progress_bar(run):
    code, stdout, stderr = run("--json", "speech", "Hello from the CLI.", "--voice", "narrator")

    assert code == 0 and stderr == ""
    result = json.loads(stdout)
    assert result["job"]["state"] == "JOB_STATE_SUCCEEDED"
    assert result["job"]["mediaType"] == "MEDIA_TYPE_SPEECH"
    file = result["files"][0]
    path = Path(file["path"])
    assert path.name == result["job"]["id"] + ".wav"  # the default name, in the current folder
    assert _sha256(path) == file["sha256"] == result["job"]["artifacts"][0]["sha256"]
    assert_media_file(path.read_bytes(), "audio/wav")


def test_several_images_get_numbered_files(run, tmp_path):
    code, stdout, _ = run(
        "image", "kites", "--count", "2", "--width", "64", "--height", "48", "-o", str(tmp_path / "kite.png")
    )

    assert code == 0
    for name in ("kite-1.png", "kite-2.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size == (64, 48)
        assert name in stdout


def test_image_input_from_a_local_file_is_sent_inline(run, tmp_path):
    source = tmp_path / "first.png"
    Image.new("RGB", (32, 32), "teal").save(source)

    code, stdout, _ = run("--json", "video", "it moves", "--duration", "1", "--image", str(source), "--no-wait")

    assert code == 0
    assert json.loads(stdout)["state"] == "JOB_STATE_QUEUED"


def test_music_and_sound_effect_commands(run, tmp_path):
    code, _, _ = run("music", "--mood", "calm", "--instrumental", "--duration", "1", "-o", str(tmp_path / "m.wav"))
    assert code == 0
    assert_media_file((tmp_path / "m.wav").read_bytes(), "audio/wav")
    code, _, _ = run("sound-effect", "a door creaks", "--duration", "1", "-o", str(tmp_path / "s.wav"))
    assert code == 0
    assert_media_file((tmp_path / "s.wav").read_bytes(), "audio/wav")


def test_invalid_argument_exits_2_and_names_the_field(run):
    code, _, stderr = run("video", "")

    assert code == 2
    assert stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "  prompt: is required" in stderr


def test_failed_job_exits_1_with_its_reason(run):
    code, _, stderr = run("sfx", "wind", "--option", "mock_behavior=rate_limit")

    assert code == 1
    assert "error: PROVIDER_RATE_LIMITED: " in stderr
    assert "retry after 30 s" in stderr


def test_bad_usage_exits_2(run, tmp_path):
    for args in (["video", "x", "--image", str(tmp_path / "missing.png")], ["video", "x", "--option", "novalue"]):
        with pytest.raises(SystemExit) as caught:
            run(*args)
        assert caught.value.code == 2


def test_job_jobs_download_and_cancel(run, tmp_path):
    code, stdout, _ = run("--json", "video", "x", "--duration", "1", "-o", str(tmp_path / "first.mp4"))
    done = json.loads(stdout)["job"]["id"]
    code, stdout, _ = run("--json", "video", "y", "--duration", "1", "--option", "mock_behavior=stall", "--no-wait")
    stalled = json.loads(stdout)["id"]

    code, stdout, _ = run("job", done)  # no --media: every service is asked
    assert code == 0 and f"job       {done}" in stdout and "media     video" in stdout
    code, stdout, _ = run("download", done, "-o", str(tmp_path / "again.mp4"))
    assert code == 0 and "saved" in stdout
    assert_media_file((tmp_path / "again.mp4").read_bytes(), "video/mp4")

    code, stdout, _ = run("cancel", stalled)
    assert (code, stdout) == (0, f"job {stalled} cancelled\n")

    code, stdout, _ = run("--json", "jobs", "video", "--state", "cancelled")
    assert [j["id"] for j in json.loads(stdout)["jobs"]] == [stalled]
    code, stdout, _ = run("jobs", "video", "--limit", "1")
    assert code == 0 and len(stdout.splitlines()) == 1


def test_unknown_job_exits_1(run):
    code, _, stderr = run("job", "job_" + "0" * 32)
    assert code == 1 and stderr.startswith("error: JOB_NOT_FOUND: ")


def test_providers(run):
    code, stdout, _ = run("providers", "--media", "image")
    assert code == 0 and "mock" in stdout
    code, stdout, _ = run("--json", "providers")
    media = {p["mediaType"] for p in json.loads(stdout)["providers"]}
    assert "MEDIA_TYPE_SOUND_EFFECT" in media and "MEDIA_TYPE_VIDEO" in media


def test_unreachable_server_exits_1(capsys):
    code = main(["--server", "127.0.0.1:1", "--timeout", "0.5", "providers"])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_progress_bar_redraws_in_place_on_a_terminal():
    stream = io.StringIO()
    bar = ProgressBar(stream, interactive=True)
    job = common_pb2.Job(state=common_pb2.JOB_STATE_RUNNING)
    job.progress.phase = common_pb2.JOB_PHASE_GENERATING
    job.progress.vendor_status = "dreaming"
    for fraction in (0.25, 0.25, 0.5):
        job.progress.fraction = fraction
        bar.job(job)
    bar.finish()

    text = stream.getvalue()
    assert text.count("\r") == 2  # the repeat drew nothing
    assert "[######------------------]  25% generating (vendor: dreaming)" in text
    assert text.endswith("50% generating (vendor: dreaming)\n")


def test_describe_progress_of_an_ended_job_drops_the_vendor_status():
    job = common_pb2.Job(state=common_pb2.JOB_STATE_FAILED)
    job.progress.vendor_status = "running"
    assert describe_progress(job) == "[                        ]  --% failed"
