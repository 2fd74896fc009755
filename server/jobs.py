"""Helpers over Job messages shared by the runner and the RPC layer."""

from __future__ import annotations

import time
import uuid

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from mediagen.v1 import common_pb2, image_pb2, music_pb2, sound_effect_pb2, speech_pb2, video_pb2

# media type -> (key used in config and storage keys, Generate request class)
MEDIA = {
    common_pb2.MEDIA_TYPE_VIDEO: ("video", video_pb2.GenerateVideoRequest),
    common_pb2.MEDIA_TYPE_SPEECH: ("speech", speech_pb2.GenerateSpeechRequest),
    common_pb2.MEDIA_TYPE_MUSIC: ("music", music_pb2.GenerateMusicRequest),
    common_pb2.MEDIA_TYPE_SOUND_EFFECT: ("sound_effect", sound_effect_pb2.GenerateSoundEffectRequest),
    common_pb2.MEDIA_TYPE_IMAGE: ("image", image_pb2.GenerateImageRequest),
}


def media_key(media_type: int) -> str:
    return MEDIA[media_type][0]


def request_class(media_type: int) -> type[Message]:
    return MEDIA[media_type][1]


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def now_timestamp() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def timestamp_after(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns() + int(seconds * 1e9))
    return stamp


def seconds_until(stamp: timestamp_pb2.Timestamp) -> float:
    return (stamp.ToNanoseconds() - time.time_ns()) / 1e9
