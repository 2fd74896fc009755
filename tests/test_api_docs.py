"""docs/api.md is generated (scripts/gen_api_docs.py, `make docs`) and must not be stale."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from providers import errors
from tests.live_server import ROOT

SCRIPT = ROOT / "scripts" / "gen_api_docs.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_api_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(gen) -> str:
    return gen.render()


def test_docs_are_up_to_date(rendered):
    committed = (ROOT / "docs" / "api.md").read_text()
    assert committed == rendered, "docs/api.md is stale: run `make docs`"


def test_every_service_rpc_message_and_enum_is_documented(gen, rendered):
    for file in gen.load_descriptors():
        for service in file.service:
            assert f"### {service.name}\n" in rendered
            for method in service.method:
                assert f"| `{method.name}` |" in rendered
        for message in file.message_type:
            assert f"### {message.name}\n" in rendered
            for field in message.field:
                assert f"| `{field.name}` | {field.number} |" in rendered
        for enum in file.enum_type:
            assert f"### {enum.name}\n" in rendered


def _error_classes(cls=errors.MediagenError):
    yield cls
    for sub in cls.__subclasses__():
        yield from _error_classes(sub)


def test_every_error_reason_has_a_row_with_its_code(rendered):
    # Cross-checks the generator's source scan against the classes themselves.
    for cls in _error_classes():
        row = f"| `{cls.reason}` |"
        assert row in rendered, f"{cls.__name__}.reason {cls.reason} is not in docs/api.md"
        line = next(line for line in rendered.splitlines() if line.startswith(row))
        assert f"`{cls.code.name}`" in line


def test_every_documented_reason_has_advice(gen, rendered):
    reasons, _ = gen.scan_errors()
    for reason in reasons.values():
        line = next(line for line in rendered.splitlines() if line.startswith(f"| `{reason.reason}` |"))
        assert line.rstrip(" |").split("|")[-1].strip(), f"no advice for {reason.reason}"
