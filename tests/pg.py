"""PostgreSQL for tests: a fresh schema per test on the local server.

The server is ``MEDIAGEN_TEST_DATABASE_URL`` (default: the local PostgreSQL on
127.0.0.1:5432, database ``test``, trust authentication). When none can be
reached, tests that need it are skipped with a message, except under CI
(``CI=true``), where that is a failure: CI machines run PostgreSQL.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get("MEDIAGEN_TEST_DATABASE_URL", DEFAULT_URL)


@functools.cache
def _unreachable() -> str:
    """Why PostgreSQL cannot be used ('' when it can)."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - a dependency of mediagen
        return f"psycopg is not installed ({exc})"
    try:
        psycopg.connect(server_url(), connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL at {server_url()} ({str(exc).strip()}); set MEDIAGEN_TEST_DATABASE_URL"
    return ""


def require_postgres() -> None:
    why = _unreachable()
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs PostgreSQL: {why}")
        pytest.skip(why)


def with_schema(url: str, schema: str) -> str:
    """``url`` with every connection's search_path set to ``schema``."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A new, empty schema; yields a database URL that uses it. Dropped afterwards."""
    import psycopg

    require_postgres()
    schema = f"mediagen_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_schema(server_url(), schema)
    finally:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
