"""Requests a load run sends after an order's 201 (a cancel, a confirm), each in a task of
its own on one shared HTTP session, all awaited by ``drain()`` before the checks."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


@dataclass(frozen=True)
class Answer:
    """A follow-up's final answer: its HTTP ``status`` (below 500) and JSON object body, or
    no status and what the last try met (a 5xx's code, an error's name) once time ran out;
    ``requests``: the tries it took."""

    status: int | None
    outcome: str
    body: dict[str, Any]
    requests: int


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

    async def post_until_answered(
        self,
        url: str,
        path: str,
        *,
        urls: Sequence[str],
        rng: random.Random,
        retry_for: float,
        json: object = None,
    ) -> Answer:
        """POST ``path`` to ``url``, retried on another of ``urls`` (0.2 to 0.8 s apart)
        past a dead replica, a timeout or a 5xx, until ``retry_for`` seconds have passed."""
        deadline = time.monotonic() + retry_for
        requests = 0
        while True:
            requests += 1
            try:
                async with self.session.post(f"{url}{path}", json=json) as response:
                    status, raw = response.status, await response.read()
                if status < 500:
                    doc = orjson.loads(raw) if raw else {}
                    body = doc if isinstance(doc, dict) else {}
                    return Answer(status, str(status), body, requests)
                outcome = str(status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = type(exc).__name__
            if time.monotonic() > deadline:
                return Answer(None, outcome, {}, requests)
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            url = rng.choice(urls)

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
