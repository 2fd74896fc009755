"""Signed webhooks: delivery, retries with one event id, crash safety, slow receivers, SSRF."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time

import grpc
import pytest

from clients.webhooks import WebhookVerificationError, verify_webhook
from mediagen.v1 import common_pb2, image_pb2, image_pb2_grpc
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.fakes.server import FakeVendorServer, Reply
from tests.test_crash_recovery import ServerProcess, _free_port, _ready

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
ALL_EVENTS = [
    common_pb2.WEBHOOK_EVENT_TYPE_STARTED,
    common_pb2.WEBHOOK_EVENT_TYPE_PROGRESS,
    common_pb2.WEBHOOK_EVENT_TYPE_SUCCEEDED,
    common_pb2.WEBHOOK_EVENT_TYPE_FAILED,
    common_pb2.WEBHOOK_EVENT_TYPE_CANCELLED,
]


class Receiver:
    """A webhook receiver on 127.0.0.1 that verifies signatures and records deliveries."""

    def __init__(self, answers=None) -> None:
        self.server = FakeVendorServer().__enter__()
        self.deliveries: list[dict] = []
        self.bad_signatures = 0
        self._answers = list(answers or [])
        self._lock = threading.Lock()
        self.server.route("POST", "/hook", self._hook)

    @property
    def url(self) -> str:
        return f"{self.server.url}/hook"

    def _hook(self, request):
        with self._lock:
            answer = self._answers.pop(0) if self._answers else Reply(204)
        try:
            event = verify_webhook(request.body, request.headers, SECRET)
        except WebhookVerificationError:
            self.bad_signatures += 1
            return Reply(400, "bad signature")
        with self._lock:
            self.deliveries.append({"id": request.headers["webhook-id"], "type": event["type"], "status": answer.status})
        return answer

    def close(self) -> None:
        self.server.__exit__(None, None, None)


async def _until(predicate, within=20.0):
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


@pytest.fixture
async def hooked(tmp_path):
    server = MediagenServer(make_settings(tmp_path, webhook_secrets=f"*:{SECRET}"))
    await server.start()
    server.webhooks.poll_interval = 0.1
    yield server
    await server.stop(grace=0.1)


async def _generate(server, url, events=(), **fields):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = image_pb2_grpc.ImageServiceStub(channel)
        request = image_pb2.GenerateImageRequest(
            prompt="x", width=64, height=64, webhook=common_pb2.Webhook(url=url, events=list(events)), **fields
        )
        request.webhook.progress_interval.FromMilliseconds(1)
        job = (await stub.GenerateImage(request)).job
        async for _ in stub.WatchImageJob(image_pb2.WatchImageJobRequest(job_id=job.id)):
            pass
        return job


async def _get(server, job_id):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = image_pb2_grpc.ImageServiceStub(channel)
        return (await stub.GetImageJob(image_pb2.GetImageJobRequest(job_id=job_id))).job


async def test_every_subscribed_event_arrives_once_per_id(hooked):
    receiver = Receiver()
    try:
        job = await _generate(hooked, receiver.url, ALL_EVENTS, provider_options={"mock_latency_seconds": 0.3})
        await _until(lambda: any(d["type"] == "job.succeeded" for d in receiver.deliveries))
        # Events are sent concurrently and may arrive out of order: the id ends in the sequence.
        in_order = sorted(receiver.deliveries, key=lambda d: int(d["id"].rsplit("_", 1)[1]))
        types = [d["type"] for d in in_order]
        assert types[0] == "job.started" and types[-1] == "job.succeeded" and "job.progress" in types
        ids = [d["id"] for d in receiver.deliveries]
        assert len(ids) == len(set(ids))
        assert receiver.bad_signatures == 0
        deliveries = (await _get(hooked, job.id)).webhook_deliveries
        assert {d.event_id for d in deliveries} == set(ids)
        assert all(d.state == common_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED and d.attempts == 1 for d in deliveries)
    finally:
        receiver.close()


async def test_a_failing_receiver_gets_the_same_event_id_until_it_succeeds(hooked):
    receiver = Receiver(answers=[Reply(503), Reply(429, headers={"Retry-After": "0"}), Reply(200)])
    try:
        job = await _generate(hooked, receiver.url)  # default events: the end only
        await _until(lambda: len(receiver.deliveries) == 3)
        assert [d["status"] for d in receiver.deliveries] == [503, 429, 200]
        assert len({d["id"] for d in receiver.deliveries}) == 1
        await _until(lambda: True)
        delivery = (await _get(hooked, job.id)).webhook_deliveries[0]
        assert delivery.state == common_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED and delivery.attempts == 3
        assert delivery.type == common_pb2.WEBHOOK_EVENT_TYPE_SUCCEEDED
        # A 4xx other than 429 stops retries.
        refusing = Receiver(answers=[Reply(410)])
        try:
            job = await _generate(hooked, refusing.url)
            await _until(lambda: len(refusing.deliveries) == 1)
            await asyncio.sleep(0.5)
            delivery = (await _get(hooked, job.id)).webhook_deliveries[0]
            assert delivery.state == common_pb2.WEBHOOK_DELIVERY_STATE_FAILED and delivery.last_status_code == 410
            assert len(refusing.deliveries) == 1
        finally:
            refusing.close()
    finally:
        receiver.close()


async def test_a_receiver_that_never_answers_does_not_delay_others(hooked):
    stuck = Receiver(answers=[Reply(200, delay=30)])
    fast = Receiver()
    try:
        await _generate(hooked, stuck.url)
        started = time.monotonic()
        await _generate(hooked, fast.url)
        await _until(lambda: fast.deliveries, within=5)
        assert time.monotonic() - started < 5
    finally:
        fast.close()
        stuck.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "https://10.1.2.3/hook", "https://169.254.169.254/latest", "ftp://example.com/x"])
async def test_disallowed_targets_are_refused_at_generate(tmp_path, url):
    server = MediagenServer(make_settings(tmp_path, allow_private_urls=False, webhook_secrets=f"*:{SECRET}"))
    await server.start()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _generate(server, url)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "webhook.url" in err.value.details()
    finally:
        await server.stop(grace=0.1)


async def test_webhook_without_a_configured_secret_is_refused(channel):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        stub = image_pb2_grpc.ImageServiceStub(channel)
        await stub.GenerateImage(
            image_pb2.GenerateImageRequest(prompt="x", webhook=common_pb2.Webhook(url="https://example.com/hook"))
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_kill_9_between_the_change_and_the_delivery_still_delivers(tmp_path):
    receiver_port = _free_port()
    url = f"http://127.0.0.1:{receiver_port}/hook"  # nobody listens yet: deliveries stay pending
    port = _free_port()
    env = {
        **os.environ,
        "MEDIAGEN_LISTEN": f"127.0.0.1:{port}",
        "MEDIAGEN_DATA_DIR": str(tmp_path / "data"),
        "MEDIAGEN_MOCK_LATENCY": "0",
        "MEDIAGEN_ALLOW_PRIVATE_URLS": "1",
        "MEDIAGEN_METRICS_LISTEN": "",
        "MEDIAGEN_WEBHOOK_SECRETS": f"*:{SECRET}",
    }
    process = ServerProcess(env, port, tmp_path / "server.log")
    process.start()
    try:
        await _ready(port)

        class Remote:
            pass

        remote = Remote()
        remote.port = port
        job = await _generate(remote, url)
        pending = (await _get(remote, job.id)).webhook_deliveries
        assert pending and pending[0].state == common_pb2.WEBHOOK_DELIVERY_STATE_PENDING
        process.kill9()
        # Now stand the receiver up on the port the webhook names, and restart.
        with FakeVendorServer(port=receiver_port) as server:
            got = []
            server.route("POST", "/hook", lambda r: (got.append(verify_webhook(r.body, r.headers, SECRET)), Reply(204))[1])
            process.start()
            await _ready(port)
            await _until(lambda: got, within=30)
            assert got[0]["type"] == "job.succeeded" and got[0]["data"]["id"] == job.id
            delivery = (await _get(remote, job.id)).webhook_deliveries[0]
            assert delivery.event_id == pending[0].event_id and delivery.state == common_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED
    finally:
        process.stop()
