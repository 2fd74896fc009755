"""A plain-text progress bar for job progress and downloads (no dependencies).

On a terminal one line is redrawn in place with ``\\r``; anywhere else (a log
file, a CI console) each change is printed on its own line, and downloads
only every 10 %, so logs stay readable.
"""

from __future__ import annotations

from typing import TextIO

from clients.client import ENDED_STATES
from mediagen.v1 import common_pb2

__all__ = ["ProgressBar", "describe_progress", "human_bytes"]

BAR_WIDTH = 24


def human_bytes(count: int) -> str:
    """E.g. 1536 -> "1.5 KiB"."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _bar(fraction: float | None) -> str:
    if fraction is None:
        return "[" + " " * BAR_WIDTH + "]  --%"
    filled = round(fraction * BAR_WIDTH)
    return "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + f"] {fraction * 100:3.0f}%"


def _phase_name(phase: common_pb2.JobPhase.ValueType) -> str:
    if phase not in common_pb2.JobPhase.values():
        return "working"  # a phase added after this client was built
    return common_pb2.JobPhase.Name(phase).removeprefix("JOB_PHASE_").lower().replace("_", " ")


def describe_progress(job: common_pb2.Job) -> str:
    """One line: bar, percentage, phase, and what the vendor says, e.g.
    ``[############------------]  50% generating (vendor: running, eta 2s)``."""
    progress = job.progress
    fraction = progress.fraction if progress.HasField("fraction") else None
    if job.state in ENDED_STATES:
        # The vendor's last words are stale once the job has ended.
        state = common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        return f"{_bar(1.0 if job.state == common_pb2.JOB_STATE_SUCCEEDED else fraction)} {state}"
    notes = []
    if progress.vendor_status:
        notes.append(f"vendor: {progress.vendor_status}")
    if progress.HasField("queue_position"):
        notes.append(f"queue #{progress.queue_position}")
    if progress.HasField("eta"):
        notes.append(f"eta {progress.eta.ToTimedelta().total_seconds():.0f}s")
    text = f"{_bar(fraction)} {_phase_name(progress.phase)}"
    return f"{text} ({', '.join(notes)})" if notes else text


class ProgressBar:
    """Shows job progress, then download progress, on ``stream`` (normally stderr).

    Args:
        stream: Where to draw.
        interactive: Redraw in place; default: whether ``stream`` is a terminal.
    """

    def __init__(self, stream: TextIO, *, interactive: bool | None = None) -> None:
        self.stream = stream
        self.interactive = stream.isatty() if interactive is None else interactive
        self._line = ""
        self._key = ""

    def job(self, job: common_pb2.Job) -> None:
        """Show the job's progress (an ``on_progress`` callback for ``wait``)."""
        text = describe_progress(job)
        self._show(text, key=text)

    def download(self, label: str, done: int, total: int) -> None:
        """Show a download's progress."""
        fraction = done / total if total else 1.0
        text = f"{_bar(fraction)} {label} {human_bytes(done)} / {human_bytes(total)}"
        self._show(text, key=f"{label} {int(fraction * 10)}")

    def finish(self) -> None:
        """End the current line (on a terminal), so what follows starts clean."""
        if self.interactive and self._line:
            self.stream.write("\n")
            self.stream.flush()
        self._line = self._key = ""

    def _show(self, text: str, *, key: str) -> None:
        if self.interactive:
            if text != self._line:
                # Pad over the rest of a longer previous line.
                self.stream.write("\r" + text.ljust(len(self._line)))
                self.stream.flush()
                self._line = text
        elif key != self._key:
            self.stream.write(text + "\n")
            self.stream.flush()
        self._key = key
