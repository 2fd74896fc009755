"""mypy plugin: how our code types protobuf messages and enums.

1. The bare ``google.protobuf.message.Message`` annotation is dynamic in our
   code. Code that serves every media type (validation, routing, the provider
   interface) takes "one of the five Generate requests" as ``Message`` and reads
   fields by name after checking the descriptor; no static type says that, so
   ``Message`` written in an annotation in our modules means ``Any``. The
   generated stubs (and everything under ``google.``) keep the real class, so
   concrete messages (``common_pb2.Job``...) stay fully checked: a misspelt field
   or a wrong argument is still an error.
2. Enum values are plain ``int``, as they are at run time. mypy-protobuf declares
   each enum's values as a ``NewType`` of int (``_JobState.ValueType``), which
   makes every ``media_type: int`` our code passes around an error; here those
   NewTypes are ``int``.
"""

from __future__ import annotations

from collections.abc import Callable

from mypy.nodes import TypeInfo
from mypy.plugin import AnalyzeTypeContext, Plugin
from mypy.types import AnyType, Instance, Type, TypeOfAny

MESSAGE = "google.protobuf.message.Message"
GENERATED = "mediagen.v1."
KEEP_REAL_MESSAGE = ("mediagen.", "google.", "grpc", "grpc_status.")


def _message(ctx: AnalyzeTypeContext) -> Type:
    module = getattr(getattr(ctx.api, "api", None), "cur_mod_id", "")
    if module.startswith(KEEP_REAL_MESSAGE):
        node = ctx.api.lookup_fully_qualified(MESSAGE).node  # type: ignore[attr-defined]
        assert isinstance(node, TypeInfo)
        return Instance(node, [])
    return AnyType(TypeOfAny.explicit)


def _enum_value(ctx: AnalyzeTypeContext) -> Type:
    return ctx.api.named_type("builtins.int", [])


class ProtobufPlugin(Plugin):
    def get_type_analyze_hook(self, fullname: str) -> Callable[[AnalyzeTypeContext], Type] | None:
        if fullname == MESSAGE:
            return _message
        if fullname.startswith(GENERATED) and fullname.endswith((".ValueType", ".V")):
            return _enum_value
        return None


def plugin(version: str) -> type[Plugin]:
    return ProtobufPlugin
