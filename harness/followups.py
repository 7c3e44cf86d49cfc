"""Requests a load run sends after an order's 201 (a cancel, a confirm), each in a task of
its own on one shared HTTP session, all awaited by ``drain()`` before the checks."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import aiohttp


class FollowUps:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session, opened on first use (in the running loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64),
                timeout=aiohttp.ClientTimeout(total=5),
            )
        return self._session

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every follow-up (those spawned meanwhile too), then close the session."""
        while self._tasks:
            await asyncio.gather(*self._tasks)
        if self._session is not None:
            await self._session.close()
            self._session = None
