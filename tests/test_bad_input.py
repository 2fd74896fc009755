"""Random and hostile requests at every RPC: always a clear error, never INTERNAL.

Hypothesis drives a real server over a real channel; after each example the
server must still answer a good request.
"""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediagen.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    image_pb2,
    image_pb2_grpc,
    music_pb2,
    music_pb2_grpc,
    sound_effect_pb2,
    sound_effect_pb2_grpc,
    speech_pb2,
    speech_pb2_grpc,
    video_pb2,
    video_pb2_grpc,
)
from tests.conftest import ThreadedServer, make_settings

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAUTHENTICATED,
}

SERVICES = {
    "Video": (video_pb2, video_pb2_grpc),
    "Speech": (speech_pb2, speech_pb2_grpc),
    "Music": (music_pb2, music_pb2_grpc),
    "SoundEffect": (sound_effect_pb2, sound_effect_pb2_grpc),
    "Image": (image_pb2, image_pb2_grpc),
}

hostile_text = st.one_of(
    st.text(max_size=50),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=200),
    st.builds(lambda n, c: c * n, st.integers(0, 200_000), st.sampled_from(["a", "\x00", "é", "\u202e", "🦊", "\n"])),
    st.sampled_from(["", " ", "../../etc/passwd", "job_" + "0" * 32, "\x7f", "%s%s%n", "' OR 1=1 --"]),
)
extreme_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -1.0, 1e-300, 1e300, math.inf, -math.inf, math.nan, 4.0, 600.0, 601.0]),
)
extreme_int = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 2**31 - 1, -(2**31)]))
extreme_int64 = st.integers(-(2**63), 2**63 - 1)
json_value = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)


def _field_strategy(field):
    fd = field.type
    if field.is_repeated:
        return None
    if fd == field.TYPE_STRING:
        return hostile_text
    if fd in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return extreme_float
    if fd in (field.TYPE_INT32, field.TYPE_ENUM):
        return extreme_int
    if fd == field.TYPE_INT64:
        return extreme_int64
    if fd == field.TYPE_BOOL:
        return st.booleans()
    return None


def request_strategy(message_class):
    """Random values for the scalar fields of ``message_class`` (sub-messages handled apart)."""
    optional = {}
    for field in message_class.DESCRIPTOR.fields:
        strategy = _field_strategy(field)
        if strategy is not None:
            optional[field.name] = strategy
    return st.fixed_dictionaries({}, optional=optional)


def _build(message_class, values, extras):
    message = message_class()
    for name, value in values.items():
        setattr(message, name, value)
    if "provider_options" in extras and "provider_options" in message_class.DESCRIPTOR.fields_by_name:
        message.provider_options.update(extras["provider_options"])
    if "input_image" in message_class.DESCRIPTOR.fields_by_name and extras.get("image") is not None:
        kind, value = extras["image"]
        setattr(message.input_image, kind, value)
    if "timeout" in message_class.DESCRIPTOR.fields_by_name and extras.get("timeout") is not None:
        message.timeout.seconds = extras["timeout"]
    return message


extras_strategy = st.fixed_dictionaries(
    {},
    optional={
        "provider_options": st.dictionaries(st.sampled_from(["mock_behavior", "mock_latency_seconds", "x"]), json_value, max_size=3),
        "image": st.one_of(
            st.tuples(st.just("data"), st.binary(max_size=2000)),
            st.tuples(st.just("uri"), hostile_text),
            st.tuples(st.just("asset_id"), hostile_text),
        ),
        "timeout": st.integers(-(10**12), 10**12),
    },
)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = ThreadedServer(make_settings(tmp_path_factory.mktemp("badinput"), mock_latency=0.0))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield channel
    channel.close()
    server.close()


def _check(call, *args, **kwargs):
    try:
        result = call(*args, timeout=10, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "DESCRIPTOR"):
            for _ in result:
                pass
    except grpc.RpcError as err:
        assert err.code() in ALLOWED, f"{err.code()}: {err.details()}"
        assert "Traceback" not in (err.details() or "")


def _still_serving(channel):
    stub = catalog_pb2_grpc.CatalogServiceStub(channel)
    assert stub.ListProviders(catalog_pb2.ListProvidersRequest(), timeout=10).providers


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.parametrize("noun", list(SERVICES))
@FUZZ
@given(data=st.data())
def test_generate_with_hostile_fields(live, noun, data):
    pb2, pb2_grpc = SERVICES[noun]
    message_class = getattr(pb2, f"Generate{noun}Request")
    values = data.draw(request_strategy(message_class))
    extras = data.draw(extras_strategy)
    request = _build(message_class, values, extras)
    # Hostile jobs that pass validation must not run for long.
    request.provider_options.update({"mock_latency_seconds": 0})
    stub = getattr(pb2_grpc, f"{noun}ServiceStub")(live)
    _check(getattr(stub, f"Generate{noun}"), request)
    _still_serving(live)


@pytest.mark.parametrize("noun", list(SERVICES))
@FUZZ
@given(job_id=hostile_text, offset=extreme_int64, index=extreme_int, after=extreme_int64, state=extreme_int, size=extreme_int, token=hostile_text)
def test_job_rpcs_with_hostile_fields(live, noun, job_id, offset, index, after, state, size, token):
    pb2, pb2_grpc = SERVICES[noun]
    stub = getattr(pb2_grpc, f"{noun}ServiceStub")(live)
    msg = lambda name, **kw: getattr(pb2, name.format(N=noun))(**kw)  # noqa: E731
    _check(getattr(stub, f"Get{noun}Job"), msg("Get{N}JobRequest", job_id=job_id))
    _check(getattr(stub, f"Cancel{noun}Job"), msg("Cancel{N}JobRequest", job_id=job_id))
    _check(getattr(stub, f"Download{noun}"), msg("Download{N}Request", job_id=job_id, offset=offset, artifact_index=index))
    _check(getattr(stub, f"Watch{noun}Job"), msg("Watch{N}JobRequest", job_id=job_id, after_sequence=after))
    _check(getattr(stub, f"List{noun}Jobs"), msg("List{N}JobsRequest", page_size=size, page_token=token, state=state))
    _still_serving(live)


@FUZZ
@given(media_type=extreme_int, name=hostile_text, key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20), raw=st.binary(max_size=100))
def test_catalog_and_metadata_with_hostile_values(live, media_type, name, key, raw):
    stub = catalog_pb2_grpc.CatalogServiceStub(live)
    # Binary metadata may carry any bytes (bad UTF-8 included).
    metadata = ((f"{key}-bin", raw), ("authorization", "Bearer " + raw.hex()))
    _check(stub.ListProviders, catalog_pb2.ListProvidersRequest(media_type=media_type), metadata=metadata)
    _check(stub.GetProvider, catalog_pb2.GetProviderRequest(name=name, media_type=media_type), metadata=metadata)
    _still_serving(live)


def test_oversized_message_is_refused_cleanly(live):
    stub = image_pb2_grpc.ImageServiceStub(live)
    request = image_pb2.GenerateImageRequest(prompt="x", input_image=common_pb2.MediaInput(data=b"\0" * (21 * 1024 * 1024)))
    with pytest.raises(grpc.RpcError) as err:
        stub.GenerateImage(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    request = image_pb2.GenerateImageRequest(prompt="x", input_image=common_pb2.MediaInput(data=b"\0" * (17 * 1024 * 1024)))
    with pytest.raises(grpc.RpcError) as err:
        stub.GenerateImage(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _still_serving(live)
