"""Fixtures of the integration tests beyond the session's stack (``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from shared.settings import Settings


@pytest.fixture
def db_settings(request: pytest.FixtureRequest) -> Settings:
    try:
        settings = request.getfixturevalue("settings")
    except pytest.FixtureLookupError:
        if not os.environ.get("CRDB_DSN"):
            pytest.skip("no local stack fixture and CRDB_DSN is not set")
        settings = Settings.from_env()
    assert isinstance(settings, Settings)
    return settings


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.asynccontextmanager
async def fresh_database(stack: Any, settings: Settings) -> AsyncIterator[Settings]:
    """``settings`` pointing at a new, empty database (dropped afterwards when we made it):
    made by the local stack when there is one, else with ``CREATE DATABASE``."""
    name = f"contract_{uuid.uuid4().hex[:10]}"
    service = getattr(stack, "service", None)
    if callable(service) and hasattr(service("postgres"), "create_database"):
        dsn = await asyncio.to_thread(service("postgres").create_database, name)
        yield settings.model_copy(update={"database_dsn": dsn})
        return
    conn = await asyncpg.connect(settings.database_dsn, timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    try:
        yield settings.model_copy(
            update={"database_dsn": _with_database(settings.database_dsn, name)})
    finally:
        conn = await asyncpg.connect(settings.database_dsn, timeout=10)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


def optional_stack(request: pytest.FixtureRequest) -> Any:
    """The session's stack, or None when running against ``CRDB_DSN`` alone."""
    try:
        return request.getfixturevalue("stack")
    except pytest.FixtureLookupError:
        return None


@pytest.fixture
async def fresh_settings(
    request: pytest.FixtureRequest, db_settings: Settings
) -> AsyncIterator[Settings]:
    """Settings pointing at a new, empty database (see :func:`fresh_database`)."""
    async with fresh_database(optional_stack(request), db_settings) as settings:
        yield settings
