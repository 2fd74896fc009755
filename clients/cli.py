"""``mediagen``: generate media from the command line, and inspect jobs.

    mediagen video "a red fox in the snow" --duration 4 -o fox.mp4
    mediagen speech "Hello there" --voice narrator --format mp3
    mediagen image "a lighthouse at dusk" --count 2 -o lighthouse
    mediagen jobs video --state failed
    mediagen job JOB_ID            # finds the media service by itself
    mediagen download JOB_ID -o out.mp4
    mediagen upload first-frame.png     # an asset, for input_image.asset_id
    mediagen --json providers --media image

Generating watches the job with a progress bar on stderr, downloads the
result (verified by sha256) and prints where it went. ``--json`` prints proto3
JSON on stdout instead, with no progress bar. Exit codes: 0 ok, 1 error,
2 invalid arguments (from argparse or the server's INVALID_ARGUMENT), 130
interrupted.

``--image PATH`` sends a local file inline when it is at most 4 MiB and
uploads it first (AssetService, streamed in 1 MiB chunks) when it is larger;
an https URL is passed by reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from clients.client import DEFAULT_TARGET, DEFAULT_TIMEOUT, ENDED_STATES, TOKEN_ENV
from clients.errors import MediagenError, from_status
from clients.media import Media, media_spec
from clients.progress import ProgressBar, describe_progress, human_bytes
from clients.sync import MediagenClient
from mediagen.v1 import catalog_pb2, common_pb2

SERVER_ENV = "MEDIAGEN_SERVER"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

MEDIA_CHOICES: dict[str, Media] = {
    "video": "video",
    "speech": "speech",
    "music": "music",
    "sound_effect": "sound_effect",
    "sound-effect": "sound_effect",
    "sfx": "sound_effect",
    "image": "image",
}
# What the server stores, by MIME type; anything else falls back to ".bin".
EXTENSIONS = {
    "video/mp4": ".mp4",
    "audio/wav": ".wav",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
    "audio/aac": ".aac",
    "audio/mp4": ".m4a",
    "audio/pcm": ".pcm",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
}
# Price units as (singular, plural).
_UNIT_NAMES = {
    common_pb2.PRICE_UNIT_SECOND: ("second", "seconds"),
    common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS: ("thousand characters", "thousand characters"),
    common_pb2.PRICE_UNIT_IMAGE: ("image", "images"),
    common_pb2.PRICE_UNIT_TRACK: ("track", "tracks"),
    common_pb2.PRICE_UNIT_CREDIT: ("credit", "credits"),
    common_pb2.PRICE_UNIT_REQUEST: ("request", "requests"),
    common_pb2.PRICE_UNIT_MINUTE: ("minute", "minutes"),
}


def _enum_choices(enum: Any) -> list[str]:
    """Short lower-case names of an enum's values, e.g. AudioFormat -> ["mp3", "wav", ...]."""
    prefix = enum.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    return [v.name.removeprefix(prefix).lower() for v in enum.DESCRIPTOR.values[1:]]


# --- argument types -----------------------------------------------------------


def _media_arg(value: str) -> Media:
    try:
        return MEDIA_CHOICES[value.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown media {value!r}; choose from {', '.join(MEDIA_CHOICES)}") from None


def _option_arg(value: str) -> tuple[str, Any]:
    """``key=value``; the value is read as JSON when it parses (numbers, true, lists), else kept as text."""
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {value!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _image_arg(value: str) -> str:
    """An https URL (passed by reference) or a readable local file (inline up to 4 MiB, else uploaded)."""
    if "://" in value:
        return value
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {exc.strerror}") from None
    return value


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return number


# --- the parser ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediagen",
        description="Generate video, speech, music, sound effects and images through a mediagen server.",
    )
    # Shared options are accepted before and after the subcommand; SUPPRESS in
    # the subparsers keeps a later default from hiding an earlier value.
    parser.add_argument(
        "--server",
        default=os.environ.get(SERVER_ENV, DEFAULT_TARGET),
        help=f"host:port of the server (env {SERVER_ENV}; default %(default)s)",
    )
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"bearer token (env {TOKEN_ENV})")
    parser.add_argument("--json", action="store_true", help="print proto3 JSON on stdout; no progress bar")
    parser.add_argument(
        "--timeout",
        dest="rpc_timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        help="seconds each call to the server may take (default %(default)s)",
    )
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--server", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    shared.add_argument("--token", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    shared.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print proto3 JSON on stdout")

    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    audio_formats = _enum_choices(common_pb2.AudioFormat)

    video = _generate_parser(commands, shared, "video", "generate a video", "PROMPT", "prompt")
    video.add_argument("--duration", type=float, dest="duration_seconds", metavar="SECONDS", help="length in seconds")
    video.add_argument("--aspect-ratio", help='e.g. "16:9"')
    video.add_argument("--width", type=int)
    video.add_argument("--height", type=int)
    video.add_argument("--fps", type=int)
    video.add_argument("--seed", type=int)
    video.add_argument("--negative-prompt", help="what to avoid")
    video.add_argument(
        "--image",
        dest="input_image",
        metavar="PATH_OR_URL",
        type=_image_arg,
        help="first frame: a local file (inline up to 4 MiB, uploaded when larger) or an https URL",
    )

    speech = _generate_parser(commands, shared, "speech", "turn text into speech", "TEXT", "text")
    speech.add_argument("--voice", help='voice id or preset, e.g. "narrator"')
    speech.add_argument("--speed", type=float, help="speaking rate, 1.0 normal")
    speech.add_argument("--format", choices=audio_formats)
    speech.add_argument("--language", help='BCP-47 code, e.g. "en-US"')
    speech.add_argument("--instructions", help="style instructions, where the model takes them")

    music = _generate_parser(commands, shared, "music", "compose music", "PROMPT", "prompt", optional_text=True)
    music.add_argument("--mood")
    music.add_argument("--genre")
    music.add_argument("--theme", help='e.g. "corporate"')
    music.add_argument("--tempo", type=float, dest="tempo_bpm", metavar="BPM", help="beats per minute")
    music.add_argument("--duration", type=float, dest="duration_seconds", metavar="SECONDS", help="length in seconds")
    music.add_argument("--instrumental", action="store_true", default=None, help="no vocals")
    music.add_argument("--lyrics")
    music.add_argument("--format", choices=audio_formats)

    sfx = _generate_parser(
        commands, shared, "sfx", "generate a sound effect", "PROMPT", "prompt", aliases=["sound-effect"], media="sound_effect"
    )
    sfx.add_argument("--duration", type=float, dest="duration_seconds", metavar="SECONDS", help="length in seconds")
    sfx.add_argument("--format", choices=audio_formats)

    image = _generate_parser(commands, shared, "image", "generate images", "PROMPT", "prompt")
    image.add_argument("--width", type=int)
    image.add_argument("--height", type=int)
    image.add_argument("--aspect-ratio", help='e.g. "1:1"')
    image.add_argument("--quality", help='vendor tier, e.g. "high"')
    image.add_argument("--count", type=int, help="how many images (-o is then a stem: OUT-1, OUT-2...)")
    image.add_argument("--format", choices=_enum_choices(common_pb2.ImageFormat))
    image.add_argument("--seed", type=int)
    image.add_argument("--style", help='e.g. "vivid"')
    image.add_argument("--negative-prompt", help="what to avoid")
    image.add_argument(
        "--image",
        dest="input_image",
        metavar="PATH_OR_URL",
        type=_image_arg,
        help="source image: a local file (inline up to 4 MiB, uploaded when larger) or an https URL",
    )

    jobs = commands.add_parser("jobs", parents=[shared], help="list jobs of one media type, newest first")
    jobs.add_argument("media", type=_media_arg, metavar="MEDIA", help=", ".join(MEDIA_CHOICES))
    jobs.add_argument("--state", choices=_enum_choices(common_pb2.JobState))
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (default %(default)s)")
    jobs.set_defaults(handler=_jobs)

    job = commands.add_parser("job", parents=[shared], help="show one job")
    job.add_argument("job_id", metavar="JOB_ID")
    job.add_argument("--media", type=_media_arg, help="its media type (default: ask each service)")
    job.set_defaults(handler=_job)

    download = commands.add_parser("download", parents=[shared], help="download a job's artifact, verified")
    download.add_argument("job_id", metavar="JOB_ID")
    download.add_argument("-o", "--output", help="file to write (default: JOB_ID.EXT in the current folder)")
    download.add_argument("--media", type=_media_arg, help="its media type (default: ask each service)")
    download.add_argument("--index", type=int, default=0, help="which artifact (default %(default)s)")
    download.set_defaults(handler=_download)

    cancel = commands.add_parser("cancel", parents=[shared], help="cancel a job that has not ended")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.add_argument("--media", type=_media_arg, help="its media type (default: ask each service)")
    cancel.set_defaults(handler=_cancel)

    upload = commands.add_parser(
        "upload", parents=[shared], help="upload a local file as an asset (for input_image.asset_id)"
    )
    upload.add_argument("path", metavar="PATH", type=_image_arg)
    upload.add_argument("--content-type", help="MIME type (default: the server detects it)")
    upload.set_defaults(handler=_upload)

    providers = commands.add_parser("providers", parents=[shared], help="list the providers the server knows")
    providers.add_argument("--media", type=_media_arg, help="only this media type")
    providers.set_defaults(handler=_providers)
    return parser


def _generate_parser(
    commands: Any,
    shared: argparse.ArgumentParser,
    name: str,
    help_text: str,
    metavar: str,
    text_field: str,
    *,
    aliases: Sequence[str] = (),
    media: Media | None = None,
    optional_text: bool = False,
) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(name, parents=[shared], help=help_text, aliases=list(aliases))
    sub.add_argument(text_field, metavar=metavar, nargs="?" if optional_text else None)
    sub.add_argument("--provider", help="provider name, e.g. mock (default: the server's choice)")
    sub.add_argument("--model", help="vendor model (default: the provider's)")
    sub.add_argument(
        "--option",
        dest="provider_options",
        type=_option_arg,
        action="append",
        metavar="KEY=VALUE",
        help="provider option, repeatable; JSON values allowed (e.g. mock_latency_seconds=0.5)",
    )
    sub.add_argument(
        "--timeout",
        dest="job_timeout",
        metavar="SECONDS",
        type=_positive_float,
        help="give the job up after this many seconds",
    )
    sub.add_argument("-o", "--output", help="output file (default: JOB_ID.EXT in the current folder)")
    sub.add_argument("--no-wait", action="store_true", help="print the queued job and exit")
    sub.set_defaults(handler=_generate, media=media or name)
    return sub


# --- commands ---------------------------------------------------------------------

# Argument names that are not request fields.
_NOT_FIELDS = {
    "server",
    "token",
    "json",
    "rpc_timeout",
    "command",
    "handler",
    "media",
    "output",
    "no_wait",
    "job_timeout",
    "provider_options",
}


def _generate(client: MediagenClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    media: Media = args.media
    fields = {k: v for k, v in vars(args).items() if k not in _NOT_FIELDS and v is not None}
    if args.provider_options:
        fields["provider_options"] = dict(args.provider_options)
    if args.job_timeout:
        fields["timeout"] = args.job_timeout
    job = client.generate(media, **fields)
    if args.no_wait:
        if args.json:
            _print_json(out, json_format.MessageToDict(job))
        else:
            out.write(f"job {job.id} {_state(job)}; follow it with: mediagen job {job.id}\n")
        return 0

    bar = None if args.json else ProgressBar(err)
    try:
        try:
            job = client.wait(media, job.id, on_progress=bar.job if bar else None)
        finally:
            if bar:
                bar.finish()
        files = []
        for artifact, path in zip(job.artifacts, _output_paths(args.output, job), strict=True):
            files.append(_fetch(client, media, job, artifact, path, bar))
    except KeyboardInterrupt:
        err.write(f"\ninterrupted; the job stays on the server: mediagen job {job.id} / mediagen download {job.id}\n")
        raise
    if args.json:
        _print_json(out, {"job": json_format.MessageToDict(job), "files": files})
    else:
        _print_result(out, job, files)
    return 0


def _fetch(
    client: MediagenClient,
    media: Media,
    job: common_pb2.Job,
    artifact: common_pb2.Artifact,
    path: Path,
    bar: ProgressBar | None,
) -> dict[str, Any]:
    def show(done: int, total: int) -> None:
        if bar:
            bar.download(path.name, done, total)

    try:
        saved = client.download_to(media, job.id, path, artifact_index=artifact.index, on_progress=show)
    finally:
        if bar:
            bar.finish()
    return {"path": str(saved.resolve()), "sizeBytes": str(artifact.size_bytes), "sha256": artifact.sha256}


def _output_paths(output: str | None, job: common_pb2.Job) -> list[Path]:
    """Where each artifact goes: OUTPUT (or JOB_ID.EXT); with several, a stem with -1, -2... added."""
    artifacts = list(job.artifacts)
    exts = [_extension(a.content_type) for a in artifacts]
    if len(artifacts) == 1:
        return [Path(output) if output else Path(job.id + exts[0])]
    stem = Path(output) if output else Path(job.id)
    if stem.suffix.lower() in EXTENSIONS.values():
        stem = stem.with_suffix("")
    return [stem.with_name(f"{stem.name}-{i}{ext}") for i, ext in enumerate(exts, start=1)]


def _extension(content_type: str) -> str:
    return EXTENSIONS.get(content_type.split(";")[0].strip().lower(), ".bin")


def _jobs(client: MediagenClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    found: list[common_pb2.Job] = []
    if args.limit > 0:
        for job in client.list_jobs(args.media, args.state, page_size=min(args.limit, 1000)):
            found.append(job)
            if len(found) >= args.limit:
                break
    if args.json:
        _print_json(out, {"jobs": [json_format.MessageToDict(j) for j in found]})
        return 0
    for job in found:
        created = job.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        note = _error_reason(job) or (describe_progress(job) if job.state not in ENDED_STATES else "")
        out.write(f"{job.id}  {_state(job):<9}  {job.provider:<12}  {created}  {note}".rstrip() + "\n")
    if not found:
        err.write("no jobs\n")
    return 0


def _job(client: MediagenClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    job = _find(client, args.job_id, args.media)
    if args.json:
        _print_json(out, json_format.MessageToDict(job))
        return 0
    media = common_pb2.MediaType.Name(job.media_type).removeprefix("MEDIA_TYPE_").lower()
    lines = [
        f"job       {job.id}",
        f"media     {media}",
        f"state     {_state(job)}",
        f"provider  {job.provider}" + (f" / {job.model}" if job.model else ""),
    ]
    if job.state not in ENDED_STATES:
        lines.append(f"progress  {describe_progress(job)}")
    lines.append(f"created   {job.create_time.ToDatetime().isoformat()}Z")
    if job.HasField("end_time"):
        lines.append(f"ended     {job.end_time.ToDatetime().isoformat()}Z")
    for artifact in job.artifacts:
        lines.append(f"artifact  {artifact.index}: {_describe_artifact(artifact)}  sha256 {artifact.sha256}")
    lines.append(f"cost      {_describe_cost(job)}")
    if job.HasField("error"):
        lines.append(f"error     {_error_reason(job)}: {job.error.message}")
    out.write("\n".join(lines) + "\n")
    return 0


def _download(client: MediagenClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    job = _find(client, args.job_id, args.media)
    media = media_spec(job.media_type).name
    if args.output:
        path = Path(args.output)
    else:
        artifacts = {a.index: a for a in job.artifacts}
        ext = _extension(artifacts[args.index].content_type) if args.index in artifacts else ".bin"
        path = Path(f"{job.id}-{args.index + 1}{ext}" if len(artifacts) > 1 else job.id + ext)
    bar = None if args.json else ProgressBar(err)
    artifact = next((a for a in job.artifacts if a.index == args.index), common_pb2.Artifact(index=args.index))
    saved = _fetch(client, media, job, artifact, path, bar)
    if args.json:
        _print_json(out, saved)
    else:
        out.write(f"saved {saved['path']}  {_describe_artifact(artifact)}  sha256 {artifact.sha256}\n")
    return 0


def _cancel(client: MediagenClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    media = args.media or media_spec(client.find_job(args.job_id).media_type).name
    job = client.cancel(media, args.job_id)
    if args.json:
        _print_json(out, json_format.MessageToDict(job))
    elif job.state == common_pb2.JOB_STATE_CANCELLED:
        out.write(f"job {job.id} cancelled\n")
    else:
        out.write(f"job {job.id} had already ended: {_state(job)}\n")
    return 0


def _upload(client: MediagenClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path = Path(args.path)
    bar = None if args.json else ProgressBar(err)

    def show(done: int, total: int) -> None:
        if bar:
            bar.download(f"uploading {path.name}", done, total)

    try:
        asset = client.upload(path, content_type=args.content_type, on_progress=show)
    finally:
        if bar:
            bar.finish()
    if args.json:
        _print_json(out, json_format.MessageToDict(asset))
        return 0
    size = f", {asset.width}x{asset.height}" if asset.width else ""
    expires = f"  expires {asset.expire_time.ToDatetime().isoformat()}Z" if asset.HasField("expire_time") else ""
    out.write(
        f"asset {asset.id}  {asset.content_type}, {human_bytes(asset.size_bytes)}{size}  sha256 {asset.sha256}{expires}\n"
    )
    return 0


def _providers(client: MediagenClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    found = client.providers(args.media)
    if args.json:
        _print_json(out, {"providers": [json_format.MessageToDict(p) for p in found]})
        return 0
    for provider in found:
        out.write(_describe_provider(provider) + "\n")
    return 0


# --- output helpers ------------------------------------------------------------------


def _find(client: MediagenClient, job_id: str, media: Media | None) -> common_pb2.Job:
    return client.get_job(media, job_id) if media else client.find_job(job_id)


def _state(job: common_pb2.Job) -> str:
    if job.state not in common_pb2.JobState.values():
        return f"state {job.state}"
    return common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()


def _error_reason(job: common_pb2.Job) -> str:
    if not job.HasField("error"):
        return ""
    error = from_status(job.error)
    return error.reason or error.code.name


def _describe_artifact(artifact: common_pb2.Artifact) -> str:
    parts = [artifact.content_type, human_bytes(artifact.size_bytes)]
    if artifact.duration_seconds:
        parts.append(f"{artifact.duration_seconds:.2f} s")
    if artifact.width and artifact.height:
        parts.append(f"{artifact.width}x{artifact.height}")
    if artifact.sample_rate_hz:
        parts.append(f"{artifact.sample_rate_hz} Hz")
    return ", ".join(p for p in parts if p)


def _money(micros: int, currency: str) -> str:
    amount = f"{micros / 1_000_000:.6f}".rstrip("0").rstrip(".")
    return f"{amount} {currency or 'USD'}"


def _describe_cost(job: common_pb2.Job) -> str:
    final = job.HasField("final_cost")
    cost = job.final_cost if final else job.estimated_cost
    if not final and not job.HasField("estimated_cost"):
        return "unknown"
    singular, plural = _UNIT_NAMES.get(cost.unit, ("unit", "units"))
    basis = common_pb2.CostBasis.Name(cost.basis).removeprefix("COST_BASIS_").lower().replace("_", " ")
    detail = f"{cost.units:g} {singular if cost.units == 1 else plural}, {basis}"
    return f"{_money(cost.amount_micros, cost.currency_code)} ({detail}){'' if final else ' (estimate)'}"


def _describe_provider(provider: catalog_pb2.Provider) -> str:
    media = common_pb2.MediaType.Name(provider.media_type).removeprefix("MEDIA_TYPE_").lower()
    flags = [
        "default" if provider.default else "",
        "configured" if provider.configured else f"not configured ({provider.not_configured_reason})",
        "retired" if provider.retired else "",
        "mock" if provider.mock else "",
    ]
    models = ", ".join(m.name + (" (retired)" if m.retired else "") for m in provider.models)
    text = f"{media:<12}  {provider.name:<12}  {'; '.join(f for f in flags if f)}"
    return text + (f"  models: {models}" if models else "")


def _print_result(out: TextIO, job: common_pb2.Job, files: list[dict[str, Any]]) -> None:
    model = f" / {job.model}" if job.model else ""
    out.write(f"job   {job.id} {_state(job)} ({job.provider}{model})\n")
    for artifact, file in zip(job.artifacts, files, strict=True):
        out.write(f"file  {file['path']}  {_describe_artifact(artifact)}  sha256 {artifact.sha256}\n")
    out.write(f"cost  {_describe_cost(job)}\n")


def _print_json(out: TextIO, value: Any) -> None:
    json.dump(value, out, indent=2)
    out.write("\n")


def _report(err: TextIO, error: MediagenError) -> None:
    err.write(f"error: {error.reason or error.code.name}: {error.message}\n")
    for violation in error.field_violations:
        err.write(f"  {violation.field}: {violation.description}\n")
    if error.retry_delay is not None:
        err.write(f"  retry after {error.retry_delay:g} s\n")


# --- entry point ------------------------------------------------------------------------


Handler = Callable[[MediagenClient, argparse.Namespace, TextIO, TextIO], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse exits with 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    handler: Handler = args.handler
    try:
        with MediagenClient(args.server, token=args.token, timeout=args.rpc_timeout) as client:
            return handler(client, args, out, err)
    except MediagenError as error:
        _report(err, error)
        return EXIT_USAGE if error.code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as error:  # writing the output file
        err.write(f"error: {error.strerror or error}: {error.filename or ''}\n")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
