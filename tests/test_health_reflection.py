"""Health checking and server reflection (v1 and v1alpha), as grpcurl uses them."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

EXPECTED_SERVICES = {
    "mediagen.v1.VideoService",
    "mediagen.v1.SpeechService",
    "mediagen.v1.MusicService",
    "mediagen.v1.SoundEffectService",
    "mediagen.v1.ImageService",
    "mediagen.v1.CatalogService",
    "mediagen.v1.AssetService",
    "mediagen.v1.UsageService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


async def test_health_per_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", "mediagen.v1.VideoService", "mediagen.v1.CatalogService"]:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _reflection_call(channel, version: str):
    return channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_and_describes(channel, version):
    call = _reflection_call(channel, version)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="mediagen.v1.VideoService"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
    ]
    responses = [r async for r in call(iter(requests))]
    listed = {s.name for s in responses[0].list_services_response.service}
    assert listed == EXPECTED_SERVICES
    files = responses[1].file_descriptor_response.file_descriptor_proto
    assert files, "the file describing VideoService is served"
    assert responses[2].HasField("file_descriptor_response")
