"""Webhooks on the embedded default (``orderstack dev``, ORDER_WEBHOOKS=true, a 2 s retry
horizon), operated with ``orderstack webhooks`` on its SQLite file while it runs: a hook
made with a ``whsec_`` secret, its receiver (loopback, checking every signature as
docs/api.md documents) refusing; the batch dies and the hook is paused (listed so);
``deliveries --dead`` shows it; ``replay --all`` makes the running service send the same
batch under the same webhook-id, then every later change, in order."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx

from harness.processes import EmbeddedDev, run_command
from tests.unit.webhook_receiver import Receiver

ADMIN = "dev-admin-token-for-dead-hooks"  # noqa: S105 - a throwaway test value


def _cli(dev: EmbeddedDev, *args: str) -> tuple[int, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": f"sqlite:///{dev.workdir / 'orderstack.db'}",
        "LOG_LEVEL": "WARNING",
    }
    done = run_command(["webhooks", *args], env, module="orderstack.cli")
    return done.returncode, done.stdout + done.stderr


async def _until(check: object, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_dead_webhook_is_replayed_with_the_cli_on_the_embedded_default(
    tmp_path: Path,
) -> None:
    dev = EmbeddedDev(
        tmp_path,
        env={
            "ORDER_WEBHOOKS": "true",
            "ORDER_WEBHOOK_POLL_SECONDS": "0.1",
            "ORDER_WEBHOOK_RETRY_HORIZON_SECONDS": "2",
            "ADMIN_TOKEN": ADMIN,
        },
    )
    process = dev.process().start()
    receiver: Receiver | None = None
    try:
        process.wait_healthy()
        async with httpx.AsyncClient(timeout=10) as client:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            made = await client.post(
                f"{dev.order_url}/admin/webhooks", json={"url": "http://x.test/"}, headers=admin
            )
            secret = made.json()["secret"]
            assert made.status_code == 201 and secret.startswith("whsec_")
            await client.delete(
                f"{dev.order_url}/admin/webhooks/{made.json()['id']}", headers=admin
            )
            receiver = Receiver(secret)
            receiver.status = 503
            await receiver.up()
            hooked = await client.post(
                f"{dev.order_url}/admin/webhooks",
                json={"url": receiver.url, "secret": secret},
                headers=admin,
            )
            assert hooked.status_code == 201, hooked.text
            product = await client.post(
                f"{dev.product_url}/products", json={"name": "hook", "price": 1, "qty": 5}
            )
            pid = product.json()["id"]
            first = (await client.post(f"{dev.order_url}/orders", json={"product_id": pid})).json()

            async def paused() -> bool:
                hooks = (await client.get(f"{dev.order_url}/admin/webhooks", headers=admin)).json()
                return [h["status"] for h in hooks] == ["paused"]

            for _ in range(200):  # 10 s at most: 2 s of retries, then dead
                if await paused():
                    break
                await asyncio.sleep(0.05)
            assert await paused()
            refused = receiver.posts
            assert refused >= 2 and receiver.delivered() != []  # seen (and refused)
            code, listed = _cli(dev, "list")
            assert code == 0 and "paused" in listed and "HTTP 503" in listed, listed
            code, shown = _cli(dev, "deliveries", "--dead", "--json")
            [dead] = json.loads(shown)
            assert code == 0 and dead["status"] == "dead" and dead["webhook_id"] in receiver.order
            # Later changes wait behind the dead batch; the receiver, back, gets nothing yet.
            second = (await client.post(f"{dev.order_url}/orders", json={"product_id": pid})).json()
            receiver.status = 204
            await asyncio.sleep(0.5)
            assert receiver.posts == refused
            code, replayed = _cli(dev, "replay", "--all")
            assert code == 0 and f"({dead['webhook_id']})" in replayed, replayed
            expected = {(first["id"], "pending"), (first["id"], "confirmed")}
            expected |= {(second["id"], "pending"), (second["id"], "confirmed")}
            events = await _until(lambda: len(receiver.delivered()) >= 4, 10)
            assert events, receiver.order
            hooks = (await client.get(f"{dev.order_url}/admin/webhooks", headers=admin)).json()
        assert hooks[0]["status"] == "active"
        assert receiver.bad_signatures == 0 and receiver.mismatched == 0
        assert receiver.order[0] == dead["webhook_id"]  # the same batch, the same id
        ids = receiver.delivered()
        assert ids == sorted(ids) and len(ids) == 4
        assert sorted(receiver.changes[i] for i in ids) == sorted(expected)
    finally:
        process.stop()
        if receiver is not None:
            await receiver.down()
