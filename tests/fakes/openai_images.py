"""A fake OpenAI Images API (``POST /v1/images/generations``) on top of ``tests.fakes.server``.

It behaves as shared/vendors/image-and-storage.md (section 1) describes:

- ``Authorization: Bearer <key>`` is required; a missing or wrong key gets 401
  with OpenAI's envelope ``{"error": {"message", "type", "param", "code":
  "invalid_api_key"}}``.
- The body is checked like OpenAI does: model, prompt, n (1-10, dall-e-3 only
  1), size per model, quality per model, style (dall-e-3 only),
  ``response_format`` (dall-e only), ``output_format`` / ``background`` /
  ``moderation`` / ``output_compression`` (GPT image models only). A bad field
  gets 400 ``invalid_request_error`` naming ``param``.
- GPT image models answer ``{created, data: [{b64_json}], background,
  output_format, quality, size, usage}`` with real PNG/JPEG/WEBP images drawn
  at 1/8 of the asked size (so tests stay fast); ``size=auto`` draws 1024x1024.
- dall-e-3 is retired: 404 ``model_not_found`` "The model `dall-e-3` has been
  deprecated ..." unless ``dalle_retired`` is False; then it answers ``url``
  entries (served from ``/files/<name>`` on this fake) or ``b64_json``, each
  with a ``revised_prompt``.
- A prompt containing ``[moderated]`` gets the GPT image models' 400
  ``moderation_blocked`` (dall-e-3: ``content_policy_violation``).

Other faults (429 with or without Retry-After, ``insufficient_quota``, 5xx,
slow, dropped, malformed) are injected with the harness (``fake.server.fail_next``);
``error_body(...)`` builds OpenAI's envelope.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from typing import Any

from PIL import Image

from tests.fakes.server import FakeRequest, FakeVendorServer, Reply

OPENAI_KEY = "sk-test-" + "0a" * 24

GPT_MODELS = {"gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2", "gpt-image-2-2026-04-21", "chatgpt-image-latest"}
GPT_SIZES = {"1024x1024", "1536x1024", "1024x1536", "auto"}
DALL_E_3_SIZES = {"1024x1024", "1792x1024", "1024x1792"}
SCALE = 8
IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def error_body(message: str, *, type: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> dict[str, Any]:  # noqa: A002 - OpenAI's name
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def insufficient_quota() -> Reply:
    return Reply(
        status=429,
        body=error_body(
            "You exceeded your current quota, please check your plan and billing details.",
            type="insufficient_quota",
            code="insufficient_quota",
        ),
    )


def rate_limit_exceeded(retry_after_ms: float | None = None, retry_after: float | None = None) -> Reply:
    headers = {}
    if retry_after_ms is not None:
        headers["retry-after-ms"] = f"{retry_after_ms:g}"
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    return Reply(
        status=429,
        body=error_body("Rate limit reached for images per minute.", type="requests", code="rate_limit_exceeded"),
        headers=headers,
    )


def draw(width: int, height: int, fmt: str, seed: int) -> bytes:
    """A small real image: a flat colour picked from ``seed``."""
    colour = ((seed * 67) % 256, (seed * 131) % 256, (seed * 29) % 256)
    image = Image.new("RGB", (max(width // SCALE, 8), max(height // SCALE, 8)), colour)
    out = io.BytesIO()
    image.save(out, IMAGE_FORMATS[fmt])
    return out.getvalue()


class FakeOpenAIImages:
    def __init__(self, server: FakeVendorServer, *, key: str = OPENAI_KEY) -> None:
        self.server = server
        self.key = key
        self.dalle_retired = True
        #: Extra JSON to merge into every success answer (e.g. a huge field).
        self.extra: dict[str, Any] = {}
        #: Answer with this many bytes per image (pads the PNG's end) when set.
        self.pad_images_to: int | None = None
        self._files: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._seed = 0
        server.route("POST", "/v1/images/generations", self._generate)
        server.route("GET", "/files/{name}", self._file)

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def generations(self) -> list[FakeRequest]:
        return self.server.calls("POST", "/v1/images/generations")

    # --- handlers ---

    def _generate(self, request: FakeRequest) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return Reply(
                status=401,
                body=error_body(
                    "Incorrect API key provided: sk-...xxxx. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key",
                ),
            )
        try:
            body = request.json()
        except ValueError:
            return Reply(status=400, body=error_body("We could not parse the JSON body of your request."))
        model = body.get("model", "dall-e-2")
        prompt = body.get("prompt")
        if model == "dall-e-3" and self.dalle_retired:
            return Reply(
                status=404,
                body=error_body(
                    "The model `dall-e-3` has been deprecated, learn more here: "
                    "https://platform.openai.com/docs/deprecations",
                    code="model_not_found",
                ),
            )
        if model not in GPT_MODELS and model != "dall-e-3":
            return Reply(status=404, body=error_body(f"The model `{model}` does not exist.", code="model_not_found"))
        if not isinstance(prompt, str) or not prompt:
            return self._bad("prompt", "Missing required parameter: 'prompt'.")
        gpt = model in GPT_MODELS
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 10 or (not gpt and n != 1):
            return self._bad("n", f"Invalid 'n': {n}. For {model}, n must be {'1' if not gpt else 'between 1 and 10'}.")
        size = body.get("size", "auto" if gpt else "1024x1024")
        sizes = GPT_SIZES if gpt else DALL_E_3_SIZES
        if size not in sizes and not (model.startswith("gpt-image-2") and _free_size_ok(size)):
            return self._bad("size", f"Invalid size '{size}'. Supported sizes are {', '.join(sorted(sizes))}.")
        quality = body.get("quality", "auto" if gpt else "standard")
        if quality not in ({"low", "medium", "high", "auto"} if gpt else {"standard", "hd"}):
            return self._bad("quality", f"Invalid quality '{quality}'.")
        for name in ("output_format", "background", "moderation", "output_compression"):
            if name in body and not gpt:
                return self._bad(name, f"Unknown parameter: '{name}'.")
        for name in ("style", "response_format"):
            if name in body and gpt:
                return self._bad(name, f"Unknown parameter: '{name}'.")
        if "[moderated]" in prompt:
            if gpt:
                return Reply(
                    status=400,
                    body={
                        "error": {
                            "message": "Your request was rejected by the safety system. safety_violations=[sexual].",
                            "type": "image_generation_user_error",
                            "param": None,
                            "code": "moderation_blocked",
                        }
                    },
                )
            return Reply(
                status=400,
                body=error_body(
                    "Your request was rejected as a result of our safety system. Your prompt may "
                    "contain text that is not allowed by our safety system.",
                    code="content_policy_violation",
                ),
            )
        fmt = body.get("output_format", "png")
        width, height = (1024, 1024) if size == "auto" else (int(v) for v in size.split("x"))
        images = []
        for _ in range(n):
            with self._lock:
                self._seed += 1
                seed = self._seed
            data = draw(width, height, fmt, seed)
            if self.pad_images_to:
                data = data + b"\0" * max(self.pad_images_to - len(data), 0)
            images.append(data)
        answer: dict[str, Any] = {"created": int(time.time())}
        if gpt:
            answer["data"] = [{"b64_json": base64.b64encode(data).decode()} for data in images]
            answer.update(
                background=body.get("background", "opaque") if body.get("background") != "auto" else "opaque",
                output_format=fmt,
                quality="medium" if quality == "auto" else quality,
                size="1024x1024" if size == "auto" else size,
                usage={
                    "input_tokens": 50,
                    "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
                    "output_tokens": 1056 * n,
                    "total_tokens": 50 + 1056 * n,
                },
            )
        else:
            revised = f"A detailed rendering of: {prompt}"
            if body.get("response_format", "url") == "b64_json":
                answer["data"] = [{"b64_json": base64.b64encode(d).decode(), "revised_prompt": revised} for d in images]
            else:
                entries = []
                for data in images:
                    name = f"img-{uuid.uuid4().hex}.png"
                    with self._lock:
                        self._files[name] = data
                    entries.append({"url": f"{self.server.url}/files/{name}?se=2026-01-01&sig=abc", "revised_prompt": revised})
                answer["data"] = entries
        answer.update(self.extra)
        return Reply(body=json.dumps(answer).encode(), headers={"Content-Type": "application/json", "x-request-id": f"req_{uuid.uuid4().hex}"})

    def _file(self, request: FakeRequest) -> Reply:
        with self._lock:
            data = self._files.get(request.params["name"])
        if data is None:
            return Reply(status=404, body=b"<Error><Code>BlobNotFound</Code></Error>", headers={"Content-Type": "application/xml"})
        return Reply(body=data, headers={"Content-Type": "image/png"})

    @staticmethod
    def _bad(param: str, message: str) -> Reply:
        return Reply(status=400, body=error_body(message, param=param, code="invalid_value"))


def _free_size_ok(size: Any) -> bool:
    try:
        width, height = (int(v) for v in str(size).split("x"))
    except ValueError:
        return False
    return width % 16 == 0 and height % 16 == 0 and max(width, height) <= 3 * min(width, height) and width * height <= 3840 * 2160
