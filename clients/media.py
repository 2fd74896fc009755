"""The five media services, as data: names, stubs and request messages.

Every media service has the same seven RPCs under media-specific names
(``GenerateVideo``, ``GetVideoJob``...). ``MediaSpec`` maps the generic
operation onto them so the client is written once for all five.
"""

from __future__ import annotations

import mimetypes
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TypeAlias, cast

import grpc
from google.protobuf import duration_pb2, struct_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from mediagen.v1 import (
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

Media: TypeAlias = Literal["video", "speech", "music", "sound_effect", "image"]
#: A media name, or the ``MediaType`` enum value.
MediaLike: TypeAlias = "Media | common_pb2.MediaType.ValueType"

MEDIA_NAMES: tuple[Media, ...] = ("video", "speech", "music", "sound_effect", "image")


@dataclass(frozen=True)
class MediaSpec:
    name: Media
    noun: str  # as in the RPC names: "Video", "SoundEffect"
    media_type: common_pb2.MediaType.ValueType
    pb2: ModuleType
    stub_class: type

    def message(self, pattern: str) -> type[Message]:
        """The message class named by ``pattern`` with ``{N}`` replaced, e.g. "Get{N}JobRequest"."""
        cls: type[Message] = getattr(self.pb2, pattern.format(N=self.noun))
        return cls

    def method(self, stub: Any, pattern: str) -> Any:
        """The stub's callable for the RPC named by ``pattern``, e.g. "Watch{N}Job"."""
        return getattr(stub, pattern.format(N=self.noun))

    def stub(self, channel: grpc.aio.Channel) -> Any:
        return self.stub_class(channel)


_SPECS: dict[str, MediaSpec] = {
    spec.name: spec
    for spec in (
        MediaSpec("video", "Video", common_pb2.MEDIA_TYPE_VIDEO, video_pb2, video_pb2_grpc.VideoServiceStub),
        MediaSpec("speech", "Speech", common_pb2.MEDIA_TYPE_SPEECH, speech_pb2, speech_pb2_grpc.SpeechServiceStub),
        MediaSpec("music", "Music", common_pb2.MEDIA_TYPE_MUSIC, music_pb2, music_pb2_grpc.MusicServiceStub),
        MediaSpec(
            "sound_effect",
            "SoundEffect",
            common_pb2.MEDIA_TYPE_SOUND_EFFECT,
            sound_effect_pb2,
            sound_effect_pb2_grpc.SoundEffectServiceStub,
        ),
        MediaSpec("image", "Image", common_pb2.MEDIA_TYPE_IMAGE, image_pb2, image_pb2_grpc.ImageServiceStub),
    )
}
_SPECS_BY_TYPE = {spec.media_type: spec for spec in _SPECS.values()}


def media_spec(media: MediaLike) -> MediaSpec:
    """The spec of ``media``: a name ("video") or a ``MediaType`` value."""
    if isinstance(media, str):
        spec = _SPECS.get(media)
    else:
        spec = _SPECS_BY_TYPE.get(media)
    if spec is None:
        raise ValueError(f"unknown media {media!r}; expected one of {', '.join(MEDIA_NAMES)}")
    return spec


def enum_value(enum: EnumDescriptor, value: int | str, what: str) -> int:
    """An enum number from a number, a full name or a short name.

    For ``JobState`` all of 3, "JOB_STATE_SUCCEEDED", "SUCCEEDED" and "succeeded"
    give 3: the prefix is the one every value shares (buf's ENUM_VALUE_PREFIX).
    """
    if isinstance(value, int):
        return value
    prefix = enum.values[0].name.removesuffix("UNSPECIFIED")
    for name in (value, value.upper(), prefix + value.upper()):
        if name in enum.values_by_name:
            return enum.values_by_name[name].number
    known = ", ".join(v.name.removeprefix(prefix).lower() for v in enum.values[1:])
    raise ValueError(f"{what}: unknown value {value!r}; expected one of {known}")


def media_input(value: common_pb2.MediaInput | bytes | str | os.PathLike[str]) -> common_pb2.MediaInput:
    """A ``MediaInput`` from bytes, a URL ("https://..." goes by reference) or a local file (sent inline)."""
    if isinstance(value, common_pb2.MediaInput):
        return value
    if isinstance(value, bytes):
        return common_pb2.MediaInput(data=value)
    if isinstance(value, str) and "://" in value:
        return common_pb2.MediaInput(uri=value)
    path = Path(value)
    content_type, _ = mimetypes.guess_type(path.name)
    return common_pb2.MediaInput(data=path.read_bytes(), content_type=content_type or "")


def build_generate_request(spec: MediaSpec, fields: dict[str, Any]) -> Message:
    """``Generate<Media>Request`` from keyword fields, with friendly conversions.

    - ``provider_options``: a dict (sent as a ``Struct``);
    - ``timeout``: seconds or a ``timedelta`` (the job's timeout, sent as a ``Duration``);
    - ``input_image``: see ``media_input``;
    - enum fields (``format``...): the value or its short name, e.g. "mp3".
    """
    request = spec.message("Generate{N}Request")()
    descriptors = request.DESCRIPTOR.fields_by_name
    for name, value in fields.items():
        if value is None:
            continue
        field = descriptors.get(name)
        if field is None:
            known = ", ".join(sorted(descriptors))
            raise TypeError(f"generate({spec.name!r}) got an unknown field {name!r}; known fields: {known}")
        if name == "provider_options" and isinstance(value, dict):
            struct = struct_pb2.Struct()
            struct.update(value)
            value = struct
        elif name == "timeout" and isinstance(value, int | float | timedelta):
            seconds = value.total_seconds() if isinstance(value, timedelta) else value
            duration = duration_pb2.Duration()
            duration.FromNanoseconds(int(seconds * 1e9))
            value = duration
        elif name == "input_image":
            value = media_input(value)
        elif field.enum_type is not None:
            value = enum_value(cast(EnumDescriptor, field.enum_type), value, name)
        if isinstance(value, Message):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return request
