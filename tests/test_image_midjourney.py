"""The Midjourney adapter end to end: gRPC -> MediagenServer -> adapter -> fake midjourney-proxy over real HTTP."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json

import grpc
import httpx
import pytest
from grpc_status import rpc_status

from mediagen.v1 import catalog_pb2, common_pb2, image_pb2
from providers.image import midjourney
from providers.mock.media import probe
from providers.retry import RetryPolicy
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.fakes.midjourney import MJ_SECRET, FakeMidjourneyProxy
from tests.fakes.server import (
    FakeVendorServer,
    dropped,
    json_reply,
    malformed_json,
    rate_limited,
    server_error,
    slow,
    truncated,
)
from tests.helpers import Env, bad_fields, error_reason, png, serving, set_env

Code = grpc.StatusCode
FAST = RetryPolicy(initial=0.01, maximum=0.05, max_retry_after=5.0, max_attempts=4)
IMAGE = common_pb2.MEDIA_TYPE_IMAGE


@pytest.fixture
def fake():
    with FakeVendorServer() as server:
        yield FakeMidjourneyProxy(server)


@pytest.fixture
async def start(fake, tmp_path, monkeypatch):
    async def _start(*, secret: str | None = MJ_SECRET, base_url: str | None = "", **overrides) -> Env:
        variables = {}
        if base_url is not None:
            variables["MIDJOURNEY_BASE_URL"] = base_url or fake.base_url
        if secret is not None:
            variables["MIDJOURNEY_API_SECRET"] = secret
        set_env(monkeypatch, variables, ("MIDJOURNEY_API_SECRET", "MJ_API_SECRET", "MIDJOURNEY_BASE_URL"))
        monkeypatch.setattr(midjourney, "RETRY", FAST)
        monkeypatch.setattr(midjourney, "QUEUE_FULL_RETRY_AFTER", 0.05)
        server = MediagenServer(make_settings(tmp_path, **overrides))
        server.runner.output_retry = FAST
        channel = await servers.enter_async_context(serving(server))
        return Env(
            server,
            channel,
            IMAGE,
            "midjourney",
            fake=fake,
            defaults={"prompt": "a koi pond, ukiyo-e"},
            watch_timeout=None,
        )

    async with contextlib.AsyncExitStack() as servers:
        yield _start


@pytest.fixture
async def env(start):
    return await start()


# --- success ---------------------------------------------------------------------------


async def test_imagine_walks_the_statuses_and_stores_the_grid(env):
    job = await env.generate(aspect_ratio="16:9", negative_prompt="people", seed=42, quality="2", style="raw")
    events = await env.events(job.id)
    final = events[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    (submit,) = env.fake.submits()
    assert submit.path == "/mj/submit/imagine" and submit.headers["mj-api-secret"] == MJ_SECRET
    assert submit.json() == {"prompt": "a koi pond, ukiyo-e --ar 16:9 --no people --seed 42 --q 2 --style raw"}
    # The vendor's statuses and percent reached the watchers.
    statuses = [e.job.progress.vendor_status for e in events if e.job.progress.vendor_status]
    assert "NOT_START" in statuses and "IN_PROGRESS" in statuses
    fractions = [e.job.progress.fraction for e in events if e.job.progress.vendor_status == "IN_PROGRESS"]
    assert 0.45 in [round(f, 2) for f in fractions]
    phases = {e.job.progress.phase for e in events}
    assert common_pb2.JOB_PHASE_VENDOR_QUEUED in phases and common_pb2.JOB_PHASE_GENERATING in phases
    artifact = final.artifacts[0]
    data = await env.download(job.id)
    assert hashlib.sha256(data).hexdigest() == artifact.sha256
    info = probe(io.BytesIO(data))
    assert info.content_type == "image/png" and (info.width, info.height) == (256, 256)
    task_id = final.vendor_job_id
    assert artifact.metadata["task_id"] == task_id and artifact.metadata["action"] == "IMAGINE"
    buttons = json.loads(artifact.metadata["buttons"])
    assert buttons[0] == {"customId": f"MJ::JOB::upsample::1::{task_id}", "label": "U1"}
    assert final.final_cost.amount_micros == 0 and final.estimated_cost.units == 1


async def test_count_submits_one_task_per_grid(env):
    job = await env.run(count=3)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert len(env.fake.submits()) == 3
    assert len(job.artifacts) == 3 and len(job.vendor_job_id.split(",")) == 3
    assert len({a.sha256 for a in job.artifacts}) == 3


async def test_upscale_and_variation_of_a_finished_grid(env):
    grid = await env.run()
    task_id = grid.vendor_job_id
    upscaled = await env.run(provider_options={"action": "UPSCALE", "index": 2, "task_id": task_id})
    assert upscaled.state == common_pb2.JOB_STATE_SUCCEEDED, upscaled.error
    change = env.fake.submits()[-1]
    assert change.path == "/mj/submit/change"
    assert change.json() == {"taskId": task_id, "action": "UPSCALE", "index": 2}
    assert (upscaled.artifacts[0].width, upscaled.artifacts[0].height) == (128, 128)
    custom = f"MJ::JOB::variation::3::{task_id}"
    varied = await env.run(provider_options={"custom_id": custom, "task_id": task_id})
    assert varied.state == common_pb2.JOB_STATE_SUCCEEDED, varied.error
    action = env.fake.submits()[-1]
    assert action.path == "/mj/submit/action" and action.json() == {"taskId": task_id, "customId": custom}
    # A task the proxy does not know: code 3 inside an HTTP 200.
    missing = await env.run(provider_options={"action": "VARIATION", "index": 1, "task_id": "999"})
    assert missing.error.code == Code.INVALID_ARGUMENT.value[0]
    assert error_reason(missing.error)[0] == "PROVIDER_INVALID_REQUEST"
    assert error_reason(missing.error)[1]["vendorCode"] == "3"


async def test_image_prompt_is_sent_as_a_data_url(env):
    job = await env.run(input_image={"data": base64.b64encode(png(32, 32)).decode()})
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    sent = env.fake.submits()[0].json()
    assert sent["base64"].startswith("data:image/png;base64,iVBOR")
    job = await env.run(input_image={"uri": "https://example.com/ref.png"})
    assert env.fake.submits()[-1].json()["prompt"] == "https://example.com/ref.png a koi pond, ukiyo-e"


async def test_base_url_with_the_context_path(start, fake):
    env = await start(base_url=fake.base_url + "/mj")
    job = await env.run()
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert env.fake.submits()[0].path == "/mj/submit/imagine"


# --- failures --------------------------------------------------------------------------


async def test_banned_word_is_content_rejected(env):
    job = await env.run(prompt="a gore scene")
    assert job.error.code == Code.INVALID_ARGUMENT.value[0]
    assert error_reason(job.error)[0] == "CONTENT_REJECTED"
    assert error_reason(job.error)[1]["bannedWord"] == "gore"
    assert env.stored_files(partial=False) == []


async def test_moderated_and_failed_tasks(env):
    job = await env.run(prompt="a koi [moderated]")
    assert error_reason(job.error)[0] == "CONTENT_REJECTED"
    assert "community standards" in job.error.message
    job = await env.run(prompt="a koi [fail]")
    assert job.error.code == Code.ABORTED.value[0]
    assert error_reason(job.error)[0] == "PROVIDER_JOB_FAILED"
    assert "invalid parameter" in job.error.message
    assert error_reason(job.error)[1]["vendorStatus"] == "FAILURE"
    assert env.stored_files(partial=False) == []


async def test_queue_full_is_retried(env):
    env.fake.queue_full = 2
    job = await env.run()
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert len(env.fake.submits()) == 3


async def test_queue_full_for_good_is_rate_limited(env):
    env.fake.queue_full = 100
    job = await env.run()
    assert job.error.code == Code.RESOURCE_EXHAUSTED.value[0]
    assert error_reason(job.error)[0] == "PROVIDER_RATE_LIMITED"
    assert len(env.fake.submits()) == FAST.max_attempts


async def test_relay_out_of_balance_code(env):
    env.fake.server.fail_next(
        "POST", "/mj/submit/imagine", json_reply({"code": 25, "description": "insufficient balance", "result": None})
    )
    job = await env.run()
    assert job.error.code == Code.RESOURCE_EXHAUSTED.value[0]
    assert error_reason(job.error)[0] == "PROVIDER_OUT_OF_CREDIT"


async def test_wrong_secret_is_auth_failed(start):
    env = await start(secret="not-the-secret")
    job = await env.run()
    assert job.error.code == Code.FAILED_PRECONDITION.value[0]
    assert error_reason(job.error)[0] == "PROVIDER_AUTH_FAILED"


@pytest.mark.parametrize(
    "secret, base_url, missing",
    [(None, "", "MIDJOURNEY_API_SECRET"), (MJ_SECRET, None, "MIDJOURNEY_BASE_URL")],
)
async def test_missing_configuration(start, secret, base_url, missing):
    env = await start(secret=secret, base_url=base_url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.generate()
    assert err.value.code() == Code.FAILED_PRECONDITION
    assert error_reason(rpc_status.from_call(err.value))[0] == "PROVIDER_NOT_CONFIGURED"
    assert missing in err.value.details()
    assert env.fake.server.requests == []


async def test_poll_errors_are_retried(env):
    env.fake.server.script(
        "GET",
        "/mj/task/{id}/fetch",
        [server_error(503), rate_limited(retry_after=0.01), dropped(), malformed_json()],
    )
    job = await env.run()
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error


async def test_slow_submit_times_out(env, monkeypatch):
    env.fake.server.fail_next("POST", "/mj/submit/imagine", slow(3.0))
    provider = env.server.registry.get(common_pb2.MEDIA_TYPE_IMAGE, "midjourney")
    monkeypatch.setattr(provider.http, "timeout", httpx.Timeout(0.5))
    job = await env.run()
    assert error_reason(job.error)[0] == "PROVIDER_TIMEOUT"
    assert len(env.fake.submits()) == 1  # never sent twice


async def test_submit_5xx_is_not_resubmitted(env):
    env.fake.server.fail_next("POST", "/mj/submit/imagine", server_error(500), times=3)
    job = await env.run()
    assert job.error.code == Code.UNAVAILABLE.value[0]
    assert len(env.fake.submits()) == 1


async def test_unknown_task_on_fetch_fails_the_job(env):
    env.fake.plan = [{"status": "IN_PROGRESS", "progress": "10%"}]
    job = await env.generate()
    events = []
    async for response in env.stub.WatchImageJob(image_pb2.WatchImageJobRequest(job_id=job.id)):
        events.append(response.event)
        if response.event.job.progress.vendor_status == "IN_PROGRESS":
            env.fake.tasks.clear()  # the proxy restarted without a task store
    final = events[-1].job
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert error_reason(final.error)[0] == "PROVIDER_JOB_FAILED" and "does not know" in final.error.message


async def test_image_url_404_and_cut_short(env):
    env.fake.server.fail_next("GET", "/attachments/{name}", truncated(b"\x89PNG" + b"\0" * 4000, 200))
    job = await env.run()
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert len(env.fake.server.calls("GET", "/attachments/{name}")) == 2
    env.fake.server.fail_next("GET", "/attachments/{name}", server_error(404, ""), times=5)
    job = await env.run()
    assert error_reason(job.error)[0] == "PROVIDER_OUTPUT_UNAVAILABLE"
    assert len(env.stored_files(partial=False)) == 1


async def test_cancel_stops_polling(env):
    env.fake.plan = [{"status": "IN_PROGRESS", "progress": "10%"}]  # never finishes
    job = await env.generate()
    call = env.stub.WatchImageJob(image_pb2.WatchImageJobRequest(job_id=job.id))
    async for response in call:
        if response.event.job.progress.vendor_status == "IN_PROGRESS":
            break
    cancelled = (await env.stub.CancelImageJob(image_pb2.CancelImageJobRequest(job_id=job.id))).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    call.cancel()
    # The proxy has no cancel call: nothing but fetches and the submit reached it.
    assert {r.path.split("/")[2] for r in env.fake.server.requests} <= {"submit", "task"}


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"width": 512, "height": 512}, "width"),
        ({"format": "IMAGE_FORMAT_PNG"}, "format"),
        ({"quality": "ultra"}, "quality"),
        ({"aspect_ratio": "7:3"}, "aspect_ratio"),
        ({"prompt": "koi --ar 1:1", "aspect_ratio": "16:9"}, "aspect_ratio"),
        ({"count": 5}, "count"),
        ({"style": "raw --v 5"}, "style"),
        ({"negative_prompt": "a --b"}, "negative_prompt"),
        ({"provider_options": {"action": "UPSCALE", "index": 2}}, "provider_options.task_id"),
        ({"provider_options": {"action": "UPSCALE", "index": 9, "task_id": "1"}}, "provider_options.index"),
        ({"provider_options": {"action": "ZOOM", "task_id": "1"}}, "provider_options.action"),
        ({"provider_options": {"action": "REROLL", "task_id": "1"}, "count": 2}, "count"),
        ({"provider_options": {"speed": "fast"}}, "provider_options.speed"),
        ({"input_image": {"asset_id": "a1"}}, "input_image.asset_id"),
    ],
)
async def test_unsupported_fields_are_refused_before_any_call(env, fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.generate(**fields)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert field in bad_fields(err.value)
    assert env.fake.server.requests == []


async def test_catalog_entry(env):
    request = catalog_pb2.GetProviderRequest(name="midjourney", media_type=common_pb2.MEDIA_TYPE_IMAGE)
    entry = (await env.catalog.GetProvider(request)).provider
    assert entry.configured and entry.limits.max_count == 4 and "16:9" in entry.limits.aspect_ratios
    assert entry.models[0].name == "midjourney" and entry.models[0].default
    assert entry.prices[0].unit == common_pb2.PRICE_UNIT_IMAGE and "subscription" in entry.prices[0].note
    assert MJ_SECRET not in str(entry)
