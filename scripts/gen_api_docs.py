"""Generate docs/api.md from the protos (with their comments) and the error classes.

The services, RPCs, messages and enums come from the compiled descriptors of
protos/ (protoc through grpc_tools, with ``--include_source_info`` for the
comments). The error reasons come from the code: every ``reason = "..."`` of a
``MediagenError`` subclass and every ``reason="..."`` given when one is raised,
found by reading providers/ and server/ (nothing is imported, so a half-written
adapter cannot break the docs). What a caller should do about each reason is
written here, in ``ADVICE``; a reason without advice gets its status code's.

``make docs`` rewrites docs/api.md; ``--check`` exits 1 when it is stale (tests
and ``make lint`` run it).
"""

from __future__ import annotations

import ast
import os
import pathlib
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "docs" / "api.md"
PACKAGE = "mediagen.v1"
ERROR_ROOTS = ("providers", "server")
SERVICE_ORDER = ("VideoService", "SpeechService", "MusicService", "SoundEffectService", "ImageService")

# --- descriptors ------------------------------------------------------------


def _googleapis_include() -> str:
    import google.rpc.status_pb2 as status_pb2

    return str(pathlib.Path(status_pb2.__file__).parent.parent.parent)


def load_descriptors() -> list[descriptor_pb2.FileDescriptorProto]:
    """Our .proto files compiled with comments, in name order."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "api.binpb"
        args = [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{_googleapis_include()}",
            f"-I{well_known}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *sources,
        ]
        cwd = os.getcwd()
        os.chdir(PROTOS)
        try:
            if protoc.main(args) != 0:
                raise SystemExit("protoc failed")
        finally:
            os.chdir(cwd)
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return sorted((f for f in files if f.package == PACKAGE), key=lambda f: f.name)


class Comments:
    """Leading (else trailing) comments of one file, by descriptor path."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self.by_path: dict[tuple[int, ...], str] = {}
        for loc in file.source_code_info.location:
            text = loc.leading_comments or loc.trailing_comments
            if text:
                self.by_path[tuple(loc.path)] = text

    def paragraph(self, *path: int) -> str:
        """The comment as one line (for tables)."""
        return " ".join(self.text(*path).split()).replace("|", "\\|")

    def text(self, *path: int) -> str:
        """The comment with its paragraphs kept (for prose)."""
        raw = self.by_path.get(path, "")
        paragraphs = [" ".join(p.split()) for p in raw.strip().split("\n\n")]
        return "\n\n".join(p for p in paragraphs if p)


# Field numbers of descriptor.proto used in source-code-info paths.
MESSAGE, ENUM, SERVICE = 4, 5, 6
FIELD, NESTED, NESTED_ENUM = 2, 3, 4
METHOD = 2
VALUE = 2

SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}


def anchor(name: str) -> str:
    return name.lower().replace(".", "")


def type_ref(type_name: str) -> str:
    """A field's message or enum type, linked when it is ours."""
    name = type_name.lstrip(".")
    if name.startswith(PACKAGE + "."):
        short = name[len(PACKAGE) + 1 :]
        return f"[`{short}`](#{anchor(short)})"
    return f"`{name}`"


def field_type(f: descriptor_pb2.FieldDescriptorProto, maps: dict[str, descriptor_pb2.DescriptorProto]) -> str:
    if f.type_name and f.type_name.lstrip(".") in maps:
        entry = maps[f.type_name.lstrip(".")]
        key, value = entry.field[0], entry.field[1]
        return f"map<{field_type(key, maps)}, {field_type(value, maps)}>"
    base = type_ref(f.type_name) if f.type_name else f"`{SCALARS[f.type]}`"
    if f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {base}"
    if f.proto3_optional:
        return f"optional {base}"
    return base


# --- error reasons ----------------------------------------------------------


@dataclass
class ErrorClass:
    name: str
    module: str
    bases: list[str]
    code: str | None = None
    reason: str | None = None
    retryable: bool | None = None


@dataclass
class Reason:
    reason: str
    codes: set[str] = field(default_factory=set)
    sources: set[str] = field(default_factory=set)
    retryable: set[bool] = field(default_factory=set)


def _const_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _call_name(node: ast.Call) -> str:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return ""


def _module_of(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


def scan_errors() -> tuple[dict[str, Reason], dict[str, set[str]]]:
    """Every ErrorInfo reason with its codes and sources; every BadRequest violation reason."""
    trees: list[tuple[pathlib.Path, ast.Module]] = []
    for root in ERROR_ROOTS:
        for path in sorted((ROOT / root).rglob("*.py")):
            try:
                trees.append((path, ast.parse(path.read_text(), str(path))))
            except SyntaxError:
                print(f"warning: skipped {path.relative_to(ROOT)} (does not parse)", file=sys.stderr)

    classes: dict[str, ErrorClass] = {}
    for path, tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            cls = ErrorClass(node.name, _module_of(path), [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases])
            for stmt in node.body:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
                value = getattr(stmt, "value", None)
                for target in targets:
                    if not isinstance(target, ast.Name):
                        continue
                    if target.id == "reason" and _const_str(value):
                        cls.reason = _const_str(value)
                    elif target.id == "code" and isinstance(value, ast.Attribute):
                        cls.code = value.attr
                    elif target.id == "retryable" and isinstance(value, ast.Constant):
                        cls.retryable = bool(value.value)
            classes.setdefault(node.name, cls)

    def lineage(name: str) -> list[ErrorClass]:
        out, todo = [], [name]
        while todo:
            current = classes.get(todo.pop(0))
            if current is None or current in out:
                continue
            out.append(current)
            todo.extend(current.bases)
        return out

    def is_error(name: str) -> bool:
        return any(c.name == "MediagenError" for c in lineage(name))

    def inherited(name: str, attr: str):
        return next((getattr(c, attr) for c in lineage(name) if getattr(c, attr) is not None), None)

    reasons: dict[str, Reason] = {}

    def add(reason: str, cls: str, where: str) -> None:
        entry = reasons.setdefault(reason, Reason(reason))
        entry.codes.add(inherited(cls, "code") or "INTERNAL")
        entry.retryable.add(bool(inherited(cls, "retryable")))
        entry.sources.add(f"`{cls}` ({where})")

    for cls in classes.values():
        if cls.reason and is_error(cls.name):
            add(cls.reason, cls.name, cls.module)

    violations: dict[str, set[str]] = defaultdict(set)
    for path, tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            if name == "FieldViolation" or (name == "field" and isinstance(node.func, ast.Attribute)):
                value = node.args[2] if len(node.args) > 2 else keywords.get("reason")
                field_name = _const_str(node.args[0]) if node.args else None
                if _const_str(value):
                    violations[_const_str(value)].add(field_name or "")
                continue
            reason = _const_str(keywords.get("reason"))
            if reason and reason.isupper() and is_error(name):
                add(reason, name, _module_of(path))
    return reasons, violations


# What a caller should do, by reason; reasons not listed get their code's advice.
ADVICE = {
    "INVALID_ARGUMENT": "Fix the request: BadRequest names each bad field and why. Do not retry as is.",
    "UNKNOWN_MODEL": "Pick a model the catalog lists for the provider (CatalogService/GetProvider).",
    "NOT_FOUND": "Check the name or id. Do not retry.",
    "JOB_NOT_FOUND": "The id is wrong, belongs to another tenant or media type, or the job expired (retention). Do not retry.",
    "PROVIDER_NOT_FOUND": "Use a provider name that ListProviders returns.",
    "ARTIFACT_NOT_FOUND": "The stored file is gone (retention or storage cleanup). Generate again.",
    "ASSET_NOT_FOUND": "The asset id is wrong, belongs to another tenant, expired (retention) or was deleted. Upload it again.",
    "ASSET_TOO_LARGE": "The upload is larger than the server's `max_asset_bytes` (metadata `maxBytes`). Send a smaller file; do not retry as is.",
    "ASSET_TOO_MANY_PIXELS": "The image has more pixels than the server takes (metadata `maxPixels`, 40 MP). Scale it down and upload again.",
    "ASSET_TYPE_UNSUPPORTED": "The file is not a type assets may be (metadata `accepted`: PNG, JPEG, WebP). Convert it and upload again.",
    "ASSET_CHECKSUM_MISMATCH": "The bytes received do not have the sha256 the metadata declared: the file changed or was corrupted on the way. Upload again.",
    "INPUT_URL_UNAVAILABLE": "The provider fetches input images by URL only and this input has none: pass an https `uri`, or (for assets) run the server with S3 storage (metadata `setting`).",
    "INPUT_NOT_FETCHABLE": "The provider needs the input image's bytes and could not fetch its URL. Upload the image as an asset instead.",
    "ASSET_NOT_RESOLVED": "A mediagen bug: the server did not resolve the asset before the provider needed it. Report it.",
    "NO_MATCHING_SOUND": "Broaden the prompt or relax the filters; the library has nothing that fits.",
    "JOB_NOT_SUCCEEDED": "Download only after the job SUCCEEDED: watch it to the end first.",
    "OFFSET_OUT_OF_RANGE": "Resume from an offset between 0 and the artifact's size_bytes.",
    "FAILED_PRECONDITION": "Fix the state the message names before trying again.",
    "UNAUTHENTICATED": "Send `authorization: Bearer <token>` with a valid token.",
    "RESOURCE_EXHAUSTED": "Slow down; retry later with backoff.",
    "BUDGET_EXCEEDED": "A spending budget is used up (QuotaFailure says which). Raise it or wait for the next period; do not retry now.",
    "JOB_CANCELLED": "Someone cancelled the job. Generate again if it is still wanted.",
    "VENDOR_CANCELLED": "The vendor cancelled the job on its side. Generate again; if it repeats, contact the operator.",
    "JOB_DEADLINE_EXCEEDED": "The job ran past its timeout. Generate again with a longer `timeout` (the server caps it) or a cheaper request.",
    "INTERNAL": "A mediagen bug. Report it with the time and job id; the server log has the details.",
    "PROVIDER_ERROR": "The vendor failed in an unclassified way. Retry later; try another provider.",
    "PROVIDER_NOT_CONFIGURED": "The server lacks the vendor's key (the message names the variable). Ask the operator, or use another provider.",
    "PROVIDER_RETIRED": "The vendor retired this API or model. Use another provider or model from the catalog.",
    "PROVIDER_AUTH_FAILED": "The vendor refused the server's credentials. An operator must fix the key; retrying will not help.",
    "PROVIDER_OUT_OF_CREDIT": "The vendor account is out of credit or quota. An operator must top it up; use another provider meanwhile.",
    "PROVIDER_RATE_LIMITED": "Wait for RetryInfo.retry_delay (the vendor's Retry-After) before trying again, or use another provider.",
    "PROVIDER_INVALID_REQUEST": "The vendor rejected a value that passed mediagen's checks; the message is the vendor's. Change the request.",
    "CONTENT_REJECTED": "The vendor's moderation refused the prompt, input or output. Change the content; do not retry as is.",
    "PROVIDER_UNAVAILABLE": "Transient vendor outage. Generate again later (with the same request_id, it is safe).",
    "PROVIDER_TIMEOUT": "The vendor did not answer in time. Generate again later.",
    "PROVIDER_BAD_RESPONSE": "The vendor answered something unreadable. Generate again later; report it if it persists.",
    "PROVIDER_CIRCUIT_OPEN": "The provider failed repeatedly and is paused; wait RetryInfo.retry_delay or name another provider.",
    "NO_ELIGIBLE_PROVIDER": "No configured provider can take this request (the message says why each was ruled out). Change the request or ask the operator.",
    "PROVIDER_JOB_FAILED": "The vendor accepted the job, then failed it. Generate again, perhaps with another prompt or provider.",
    "PROVIDER_OUTPUT_UNAVAILABLE": "The result could not be fetched from the vendor (expired or missing). Generate again.",
    "OUTPUT_TOO_LARGE": "The result is larger than the server accepts. Ask for a shorter or smaller output.",
    "OUTPUT_URL_REJECTED": "The vendor pointed at a URL the server refuses to fetch (SSRF protection). An operator matter; retrying will not help.",
    "SUBMIT_OUTCOME_UNKNOWN": "The server stopped while submitting to a vendor that has no idempotency; the vendor may have run (and charged) the job. Check before generating again.",
    "STORAGE_UNAVAILABLE": "Storage is failing. Retry later.",
    "STORAGE_FULL": "Storage is full. An operator must free space.",
    "INVALID_STORAGE_KEY": "A storage key was refused. A bug or a tampered request; report it.",
}

CODE_ADVICE = {
    "INVALID_ARGUMENT": "Fix the request; never retry as is.",
    "NOT_FOUND": "Check the id or name; do not retry.",
    "FAILED_PRECONDITION": "Fix the condition first; retrying unchanged will not help.",
    "RESOURCE_EXHAUSTED": "Back off (honour RetryInfo when present) before trying again.",
    "UNAVAILABLE": "Transient: retry with backoff (Generate with the same request_id is safe).",
    "ABORTED": "The attempt failed part-way; generate again.",
    "CANCELLED": "The job was cancelled; generate again if it is still wanted.",
    "DEADLINE_EXCEEDED": "Too slow; try again with a longer timeout.",
    "UNAUTHENTICATED": "Send valid credentials.",
    "OUT_OF_RANGE": "Use a value within the range the message gives.",
    "INTERNAL": "A server bug; report it.",
}

VIOLATION_MEANING = {
    "REQUIRED": "the field must be set",
    "TOO_LONG": "the text is longer than allowed",
    "TOO_LARGE": "the inline data is larger than allowed",
    "OUT_OF_RANGE": "the number is outside the allowed range",
    "INVALID_FORMAT": "the value does not have the required form (UUID, name, ratio, URL)",
    "INVALID_CHARACTERS": "the text contains control characters",
    "UNSUPPORTED_VALUE": "the value is not one the server or provider supports",
    "UNKNOWN_MODEL": "the provider has no such model",
    "INVALID_FIELD": "the value is not valid (the description says why)",
    "TOO_SHORT": "the text is shorter than the provider accepts",
    "TOO_SMALL": "the input (e.g. an image) is smaller than the provider accepts",
    "CONFLICT": "the field contradicts another field (or the prompt); give one of them",
    "UNSUPPORTED": "the chosen provider or model does not take this field or value",
    "UNSUPPORTED_FIELD": "the chosen provider or model does not take this field",
    "UNKNOWN_OPTION": "`provider_options` has a key the provider does not know (the description lists the known ones)",
    "UNKNOWN_PROVIDER": "no provider has this name (the description lists the known ones)",
    "UNKNOWN_VOICE": "the provider has no such voice",
    "UNREACHABLE": "an input URL could not be fetched",
    "INVALID_PAGE_TOKEN": "the page token was not issued by this server (or has expired)",
    "NO_ELIGIBLE_PROVIDER": "no configured provider can serve the request as given",
}

# Meanings of enum values whose proto comment says nothing.
ENUM_MEANING = {
    "JOB_EVENT_TYPE_CREATED": "The job was stored (sequence 1). The first event of every job.",
    "JOB_EVENT_TYPE_STATE_CHANGED": "`Job.state` changed (e.g. QUEUED to RUNNING).",
    "JOB_EVENT_TYPE_PROGRESS": "`Job.progress` changed (phase, fraction, vendor status, queue position, ETA).",
}


# --- rendering --------------------------------------------------------------

LIFECYCLE = """\
Every media service works on one resource, the [`Job`](#job). A Generate RPC
validates the request, picks a provider, estimates the cost, stores the job and
returns it at once in `JOB_STATE_QUEUED`; the work goes on in the server. A job
ends in exactly one of `JOB_STATE_SUCCEEDED`, `JOB_STATE_FAILED` or
`JOB_STATE_CANCELLED`, and never changes after that.

```
QUEUED ──▶ RUNNING ──▶ SUCCEEDED
   │          ├──────▶ FAILED      (Job.error: google.rpc.Status with one ErrorInfo)
   └──────────┴──────▶ CANCELLED   (CancelJob, or the vendor cancelled it)
```

- **Idempotency.** Give `request_id` (a UUID, AIP-155) to make Generate safe to
  retry: a repeat with the same id returns the same job and never submits twice
  to a vendor, even when the repeats race.
- **Events and sequence numbers.** Every change of a job is a
  [`JobEvent`](#jobevent) with a `sequence` that starts at 1 and grows by one per
  event of that job; `Job.last_sequence` is the newest. The first event is
  `JOB_EVENT_TYPE_CREATED`, the last `JOB_EVENT_TYPE_ENDED`, after which the
  server closes the stream. Each event carries the whole job as it was right
  after it.
- **Heartbeats.** While nothing happens, Watch and GenerateStream send
  `JOB_EVENT_TYPE_HEARTBEAT` events (every `heartbeat_interval`, 15 s by default)
  that repeat the last sequence number and carry no job, so proxies that cut idle
  streams do not. Skip them.
- **Resume.** A watcher whose stream broke calls Watch again with
  `after_sequence` set to the last number it saw: it gets exactly the events it
  missed, then live ones. Watching an ended job after its last event returns an
  empty stream. The stream is a view of the job: `GetJob` can always rebuild it,
  so never treat the stream as the only copy of a result.
- **Unknown values.** `JobState`, `JobPhase` and `JobEventType` may gain values:
  treat an unknown state as "not ended yet" and keep watching.
- **Download.** `Download` streams an artifact in chunks from `offset`; the first
  message carries the [`Artifact`](#artifact) (size, sha256, content type), so the
  client can verify the bytes. A broken download resumes from the number of bytes
  already received. Chunk sizes are multiples of 3 bytes, so the base64 texts of
  consecutive chunks (proto3 JSON, grpcurl) concatenate into valid base64.
- **Deadlines.** Set a deadline on every unary call. Streams end by themselves
  when the job ends; a job has its own `timeout` (capped by the server), after
  which it FAILED with `JOB_DEADLINE_EXCEEDED`.
"""

ERRORS_INTRO = """\
Every error is a canonical gRPC status code with a `google.rpc.Status` in the
`grpc-status-details-bin` trailer, carrying exactly one `google.rpc.ErrorInfo`
(domain `mediagen.v1`, a stable UPPER_SNAKE `reason`, and `metadata` with the
values the message mentions) and, where they help, `google.rpc.BadRequest`
(field violations), `google.rpc.RetryInfo` (how long to wait, e.g. a vendor's
Retry-After) and `google.rpc.QuotaFailure` (a budget that ran out). A job that
FAILED or was CANCELLED carries the same `google.rpc.Status` in `Job.error`.

Match on `reason`, never on the message text. Retry automatically only
`UNAVAILABLE`, and only for calls that are safe to repeat (Generate with a
`request_id`, Get, List, Watch with `after_sequence`, Download from an offset).
Never retry `INVALID_ARGUMENT`, `DEADLINE_EXCEEDED` or `CANCELLED` unchanged;
retry `RESOURCE_EXHAUSTED` only after the delay RetryInfo gives.
"""


def render() -> str:
    files = load_descriptors()
    comments = {f.name: Comments(f) for f in files}
    maps: dict[str, descriptor_pb2.DescriptorProto] = {}

    def collect_maps(prefix: str, messages) -> None:
        for m in messages:
            name = f"{prefix}.{m.name}"
            if m.options.map_entry:
                maps[name] = m
            collect_maps(name, m.nested_type)

    for f in files:
        collect_maps(f.package, f.message_type)

    out: list[str] = [
        "# mediagen API reference (`mediagen.v1`)",
        "",
        "<!-- Generated by scripts/gen_api_docs.py from protos/ and the error classes in",
        "     providers/ and server/. Do not edit: run `make docs`. -->",
        "",
        "The contract is in `protos/mediagen/v1/`; the server answers gRPC reflection (v1 and",
        "v1alpha) and the standard health service `grpc.health.v1.Health`. Generated from:",
        "",
        *[f"- `protos/{f.name}`" for f in files],
        "",
        "Contents: [Services](#services) · [Job lifecycle](#job-lifecycle) · [Errors](#errors) ·",
        "[Messages](#messages) · [Enums](#enums)",
        "",
        "## Services",
        "",
    ]

    services = [(f, i, s) for f in files for i, s in enumerate(f.service)]
    order = {name: n for n, name in enumerate(SERVICE_ORDER)}
    services.sort(key=lambda t: (order.get(t[2].name, len(order)), t[2].name))
    for f, i, service in services:
        c = comments[f.name]
        out += [f"### {service.name}", "", f"`{f.package}.{service.name}` (`protos/{f.name}`)", ""]
        if c.text(SERVICE, i):
            out += [c.text(SERVICE, i), ""]
        out += ["| RPC | request | response | what it does |", "| --- | --- | --- | --- |"]
        for j, method in enumerate(service.method):
            response = type_ref(method.output_type)
            if method.server_streaming:
                response = f"stream {response}"
            request = type_ref(method.input_type)
            if method.client_streaming:
                request = f"stream {request}"
            out.append(f"| `{method.name}` | {request} | {response} | {c.paragraph(SERVICE, i, METHOD, j)} |")
        out.append("")

    out += ["## Job lifecycle", "", LIFECYCLE]
    enums_by_name = {e.name: (f, i, e) for f in files for i, e in enumerate(f.enum_type)}
    for title, enum_name in (("States", "JobState"), ("Phases", "JobPhase"), ("Events", "JobEventType")):
        if enum_name not in enums_by_name:
            continue
        f, i, enum = enums_by_name[enum_name]
        c = comments[f.name]
        out += [f"### {title} ([`{enum_name}`](#{anchor(enum_name)}))", "", "| value | meaning |", "| --- | --- |"]
        for j, value in enumerate(enum.value):
            if value.number == 0:
                continue
            meaning = c.paragraph(ENUM, i, VALUE, j) or ENUM_MEANING.get(value.name, "")
            out.append(f"| `{value.name}` | {meaning} |")
        out.append("")

    reasons, violations = scan_errors()
    out += ["## Errors", "", ERRORS_INTRO]
    out += [
        "### Reasons (`google.rpc.ErrorInfo.reason`)",
        "",
        "| reason | gRPC code | retry? | raised by | what the caller should do |",
        "| --- | --- | --- | --- | --- |",
    ]
    for reason in sorted(reasons.values(), key=lambda r: r.reason):
        codes = ", ".join(f"`{code}`" for code in sorted(reason.codes))
        advice = ADVICE.get(reason.reason) or " ".join(CODE_ADVICE.get(code, "") for code in sorted(reason.codes)).strip()
        retry = "later" if reason.retryable == {True} else "no" if reason.retryable == {False} else "depends"
        sources = "<br>".join(sorted(reason.sources))
        out.append(f"| `{reason.reason}` | {codes} | {retry} | {sources} | {advice} |")
    out += [
        "",
        "\"retry?\" is what the server itself assumes when it retries or falls back to",
        "another provider: *later* means the same request may succeed after a while.",
        "",
        "### Field violations (`google.rpc.BadRequest.field_violations[].reason`)",
        "",
        "`INVALID_ARGUMENT` errors list every bad field at once; `field` is the request",
        "field's proto name (nested fields with dots, e.g. `input_image.uri`).",
        "",
        "| reason | meaning |",
        "| --- | --- |",
    ]
    for reason in sorted(violations):
        out.append(f"| `{reason}` | {VIOLATION_MEANING.get(reason, '')} |")
    out.append("")

    out += ["## Messages", ""]
    for f in files:
        c = comments[f.name]
        for i, message in enumerate(f.message_type):
            out += render_message(message, c, (MESSAGE, i), message.name, f, maps)

    out += ["## Enums", ""]
    for f in files:
        c = comments[f.name]
        for i, enum in enumerate(f.enum_type):
            out += render_enum(enum, c, (ENUM, i), enum.name, f)
    return "\n".join(out).rstrip() + "\n"


def render_message(message, c: Comments, path: tuple[int, ...], name: str, f, maps) -> list[str]:
    if message.options.map_entry:
        return []
    out = [f"### {name}", "", f"`{f.package}.{name}` (`protos/{f.name}`)", ""]
    if c.text(*path):
        out += [c.text(*path), ""]
    if message.field:
        out += ["| field | number | type | description |", "| --- | --- | --- | --- |"]
        for j, fld in enumerate(message.field):
            note = c.paragraph(*path, FIELD, j)
            if fld.HasField("oneof_index") and not fld.proto3_optional:
                note = f"(oneof `{message.oneof_decl[fld.oneof_index].name}`) {note}".strip()
            out.append(f"| `{fld.name}` | {fld.number} | {field_type(fld, maps)} | {note} |")
        out.append("")
    else:
        out += ["No fields.", ""]
    if message.reserved_range or message.reserved_name:
        numbers = ", ".join(
            str(r.start) if r.end - r.start == 1 else f"{r.start}–{r.end - 1}" for r in message.reserved_range
        )
        names = ", ".join(f"`{n}`" for n in message.reserved_name)
        out += [f"Reserved: {', '.join(x for x in (numbers, names) if x)}.", ""]
    for k, nested in enumerate(message.nested_type):
        out += render_message(nested, c, (*path, NESTED, k), f"{name}.{nested.name}", f, maps)
    for k, enum in enumerate(message.enum_type):
        out += render_enum(enum, c, (*path, NESTED_ENUM, k), f"{name}.{enum.name}", f)
    return out


def render_enum(enum, c: Comments, path: tuple[int, ...], name: str, f) -> list[str]:
    out = [f"### {name}", "", f"`{f.package}.{name}` (`protos/{f.name}`)", ""]
    if c.text(*path):
        out += [c.text(*path), ""]
    out += ["| value | number | description |", "| --- | --- | --- |"]
    for j, value in enumerate(enum.value):
        out.append(f"| `{value.name}` | {value.number} | {c.paragraph(*path, VALUE, j)} |")
    out.append("")
    return out


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run `make docs`")
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
