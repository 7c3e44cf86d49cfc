"""A webhook receiver's signature check, as docs/api.md documents it (copied from there):
the tests verify every POST with it, so the documented procedure is the one tested; and
``Receiver``, an HTTP server on loopback that checks each POST with it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from aiohttp import web

from harness.processes import free_port


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> str:
    """Return the delivery's webhook-id, or raise ValueError."""
    msg_id = headers["webhook-id"]
    stamp = headers["webhook-timestamp"]
    if abs((time.time() if now is None else now) - int(stamp)) > 5 * 60:
        raise ValueError("timestamp too old (or too new): a replay?")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return msg_id
    raise ValueError("no valid signature")


class Receiver:
    """An HTTP server on 127.0.0.1: verifies each POST, answers ``status``; ``down()``
    closes its port (connections refused), ``up()`` opens the same port again."""

    def __init__(self, secret: str) -> None:
        self.secret, self.status, self.port = secret, 204, free_port()
        self.batches: dict[str, list[int]] = {}  # webhook-id -> its events' ids
        self.order: list[str] = []  # webhook-ids, in the order first seen
        self.posts = 0
        self.mismatched = 0
        self.bad_signatures = 0
        self.changes: dict[int, tuple[int, str]] = {}  # event id -> (order id, status)
        self._runner: web.AppRunner | None = None

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            msg_id = verify(self.secret, request.headers, body)
        except ValueError:
            self.bad_signatures += 1
            return web.Response(status=400)
        events = json.loads(body)["events"]
        ids = [e["id"] for e in events]
        self.changes.update({e["id"]: (e["order_id"], e["status"]) for e in events})
        self.posts += 1
        if msg_id not in self.batches:
            self.batches[msg_id] = ids
            self.order.append(msg_id)
        elif self.batches[msg_id] != ids:
            self.mismatched += 1
        return web.Response(status=self.status)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # A down() while dispatchers post waits for the request in flight at most 0.5 s
        # (aiohttp's default, 60 s, made a test outlive its 180 s timeout under load).
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, reuse_address=True, shutdown_timeout=0.5
        )
        await site.start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def delivered(self) -> list[int]:
        return [i for msg_id in self.order for i in self.batches[msg_id]]
