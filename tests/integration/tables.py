"""Throwaway tables for a module's own probes, on the sandbox's server or a SQLite file."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.sandbox import Sandbox
from orderstack.storage.engine import create_engine


def engine_on(where: str, sandbox: Sandbox, tmp_path: Path, *, pool_size: int) -> AsyncEngine:
    """An engine on the sandbox's server (``where`` "server") or on a SQLite file in
    ``tmp_path`` ("sqlite", one pooled connection as always there)."""
    if where == "sqlite":
        return create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'probe.db'}"))
    return create_engine(sandbox.engine_url, pool_size=pool_size)


@contextlib.asynccontextmanager
async def with_tables(engine: AsyncEngine, metadata: sa.MetaData) -> AsyncIterator[AsyncEngine]:
    """``engine`` with ``metadata``'s tables created empty; dropped, and the engine disposed
    of, on the way out."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    try:
        yield engine
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
        await engine.dispose()
