"""Who may do what, on the real stack (a product and an order service as separate
processes on MariaDB, RabbitMQ, Redis) and on the embedded default (``orderstack dev``),
both with authentication on: keys from AUTH_SIGNING_KEY (HS256) and from an identity
provider's key set (RS256, served here by a small HTTP server, rotated during a test), and
the catalog closed (AUTH_PUBLIC_CATALOG=false: the order service reads it with a staff
token it signs itself).

Each probe of the security review that found "anyone can do anything" is here: orders of
other customers, writes to the catalog, the admin routes, a cross-site form cancelling an
order; and the embedded default without keys keeps the seed's curl flow, on 127.0.0.1,
saying so."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from harness.processes import EmbeddedDev, free_port
from harness.sandbox import Sandbox
from harness.stack import Stack
from orderstack.config import load_settings
from orderstack.web.auth import Role, mint

from .conftest import UNHURRIED
from .test_api_fuzzing import fuzz

pytestmark = pytest.mark.e2e

KEY = "e2e-signing-key-" + "x" * 24  # a throwaway test key (32+ bytes)
SETTINGS = load_settings(AUTH_SIGNING_KEY=KEY)
FUZZ_EXAMPLES = 6  # per operation, role and service (tests/e2e/test_api_fuzzing.py: more)


@dataclass
class KeyServer:
    """An identity provider's key set on loopback: ``publish`` adds an RSA key by kid."""

    port: int = field(default_factory=free_port)
    private: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    published: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def publish(self, kid: str) -> None:
        key = self.private.setdefault(kid, rsa.generate_private_key(65537, 2048))
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        self.published.append({**public, "kid": kid, "use": "sig", "alg": "RS256"})

    def token(self, kid: str, subject: str, role: str, *, signed_by: str | None = None) -> str:
        key = self.private.setdefault(signed_by or kid, rsa.generate_private_key(65537, 2048))
        now = int(time.time())
        claims = {
            "sub": subject,
            "role": role,
            "iss": SETTINGS.AUTH_ISSUER,
            "aud": SETTINGS.AUTH_AUDIENCE,
            "iat": now,
            "exp": now + 300,
        }
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    def serve(self) -> ThreadingHTTPServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                owner.fetches += 1
                body = json.dumps({"keys": owner.published}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@dataclass(frozen=True)
class Site:
    product_url: str
    order_url: str
    keys: KeyServer


@pytest.fixture(scope="module")
def keys() -> Iterator[KeyServer]:
    server = KeyServer()
    server.publish("rsa-1")
    running = server.serve()
    try:
        yield server
    finally:
        running.shutdown()
        running.server_close()


def _auth_env(keys: KeyServer) -> dict[str, str]:
    return {
        "AUTH_SIGNING_KEY": KEY,
        "AUTH_JWKS_URL": keys.url,
        "AUTH_JWKS_REFRESH_SECONDS": "0",  # a rotated key is looked up at once (the test's)
        # The catalog closed too: the order service reads it with a token it signs itself.
        "AUTH_PUBLIC_CATALOG": "false",
    }


@pytest.fixture(scope="module", params=["servers", "embedded"])
def site(
    request: pytest.FixtureRequest,
    keys: KeyServer,
    make_sandbox: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    if request.param == "servers":
        sandbox: Sandbox = make_sandbox("auth", "mariadb")
        stack = Stack(
            sandbox,
            tmp_path_factory.mktemp("auth-logs"),
            extra_env={**UNHURRIED, **_auth_env(keys)},
        ).start()
        try:
            stack.wait_ready(timeout=30)
            yield Site(stack.product_url, stack.order_url, keys)
        finally:
            stack.stop()
    else:
        dev = EmbeddedDev(tmp_path_factory.mktemp("auth-dev"), env=_auth_env(keys))
        process = dev.process().start()
        try:
            process.wait_healthy()
            yield Site(dev.product_url, dev.order_url, keys)
        finally:
            process.stop()


def bearer(subject: str, role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(SETTINGS, subject, role, ttl=600)}"}


STAFF = bearer("clerk", Role.STAFF)


async def _product(http: httpx.AsyncClient, site: Site, qty: int = 10) -> int:
    created = await http.post(
        f"{site.product_url}/products",
        json={"name": "Guarded lamp", "price": 4.5, "qty": qty},
        headers=STAFF,
    )
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


async def _settled(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline, last = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        last = (await http.get(url, headers=headers)).json()
        if last.get("status") != "pending":
            return dict(last)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} still pending after 20 s: {last}")


async def test_a_customer_orders_and_sees_and_cancels_only_its_own(site: Site) -> None:
    ann, bob = bearer("ann", Role.CUSTOMER), bearer("bob", Role.CUSTOMER)
    async with httpx.AsyncClient(timeout=10) as http:
        product = await _product(http, site)
        placed = await http.post(
            f"{site.order_url}/orders", json={"product_id": product, "quantity": 3}, headers=ann
        )
        assert placed.status_code == 201, placed.text
        order = placed.json()
        assert order["customer_id"] == "ann"
        url = f"{site.order_url}/orders/{order['id']}"
        assert (await _settled(http, url, ann))["status"] == "confirmed"

        assert (await http.get(url, headers=bob)).status_code == 404
        assert (await http.post(f"{url}/cancel", headers=bob)).status_code == 404
        listed = (await http.get(f"{site.order_url}/orders", headers=bob)).json()
        assert order["id"] not in [o["id"] for o in listed]
        by_product = await http.get(f"{site.order_url}/orders/product/{product}", headers=bob)
        assert by_product.json() == []
        every = (await http.get(f"{site.order_url}/orders?limit=1000", headers=STAFF)).json()
        assert order["id"] in [o["id"] for o in every]

        stock = (await http.get(f"{site.product_url}/products/{product}", headers=ann)).json()[
            "qty"
        ]
        assert stock == 7  # bob's cancel gave nothing back
        cancelled = await http.post(f"{url}/cancel", headers=ann)
        assert cancelled.json()["status"] == "cancelled"


async def test_without_the_right_role_nothing_changes(site: Site) -> None:
    customer = bearer("ann", Role.CUSTOMER)
    async with httpx.AsyncClient(timeout=10) as http:
        product = await _product(http, site, qty=5)
        refused = [
            await http.post(f"{site.order_url}/orders", json={"product_id": product}),
            await http.post(
                f"{site.product_url}/products",
                json={"name": "x", "price": 1, "qty": 1},
                headers=customer,
            ),
            await http.patch(
                f"{site.product_url}/products/{product}", json={"price": 0.01}, headers=customer
            ),
            await http.post(
                f"{site.product_url}/products/{product}/stock-adjustments",
                json={"delta": -5, "reason": "drained"},
                headers=customer,
            ),
            await http.delete(f"{site.product_url}/products/{product}", headers=customer),
            await http.post(
                f"{site.order_url}/admin/cache/warmup",
                json={"product_ids": [product]},
                headers=STAFF,
            ),
        ]
        assert [r.status_code for r in refused] == [401, 403, 403, 403, 403, 403]
        closed = await http.get(f"{site.product_url}/products/{product}")  # no token
        assert closed.status_code == 401
        after = (await http.get(f"{site.product_url}/products/{product}", headers=customer)).json()
        assert (after["qty"], after["price"]) == (5, 4.5)


async def test_a_cross_site_form_cannot_cancel_an_order(site: Site) -> None:
    """The review's probe, as it was run: a form post from another origin, no token."""
    ann = bearer("ann", Role.CUSTOMER)
    async with httpx.AsyncClient(timeout=10) as http:
        product = await _product(http, site)
        order = (
            await http.post(f"{site.order_url}/orders", json={"product_id": product}, headers=ann)
        ).json()
        forged = await http.post(
            f"{site.order_url}/orders/{order['id']}/cancel",
            headers={
                "Origin": "http://evil.example",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            content=b"",
        )
        assert forged.status_code == 401
        status = (await _settled(http, f"{site.order_url}/orders/{order['id']}", ann))["status"]
        assert status == "confirmed"


async def test_the_identity_providers_keys_are_taken_and_rotated_by_kid(site: Site) -> None:
    """A token of the provider's published key is taken; one naming a kid the provider
    has not published yet is 401 until it publishes it (fetched again then); a token whose
    signature is not of the key its kid names is 401 whatever it claims."""
    kid = f"rsa-rotated-{site.order_url.rsplit(':', 1)[1]}"
    async with httpx.AsyncClient(timeout=10) as http:
        orders = f"{site.order_url}/orders"

        def as_(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        first = site.keys.token("rsa-1", "carol", "customer")
        assert (await http.get(orders, headers=as_(first))).status_code == 200

        rotated = site.keys.token(kid, "carol", "customer")
        assert (await http.get(orders, headers=as_(rotated))).status_code == 401
        site.keys.publish(kid)
        assert (await http.get(orders, headers=as_(rotated))).status_code == 200

        forged = site.keys.token("rsa-1", "mallory", "admin", signed_by="mallory-key")
        warmup = f"{site.order_url}/admin/cache/warmup"
        refused = await http.post(warmup, json={"product_ids": [1]}, headers=as_(forged))
        assert refused.status_code == 401


@pytest.mark.parametrize("role", [None, *Role], ids=lambda r: r.claim if r else "no-token")
def test_both_apis_fuzzed_with_each_roles_token_never_fail(site: Site, role: Role | None) -> None:
    """schemathesis from each service's own document, as each role and without a token: no
    5xx, every answer (a 401 or 403 included) as documented, a route that declares the
    bearer scheme refuses a request without it (schemathesis' ignored-auth check)."""
    headers = bearer(f"fuzz-{role.claim}", role) if role else None
    for url in (site.order_url, site.product_url):
        assert fuzz(f"{url}/openapi.json", headers, examples=FUZZ_EXAMPLES) >= FUZZ_EXAMPLES


def test_the_embedded_default_without_keys_runs_open_on_loopback_and_says_so(
    tmp_path: Path,
) -> None:
    """`make run` as the seed: no token needed, 127.0.0.1 only, and the start-up log says
    both and how to turn authentication on."""
    dev = EmbeddedDev(tmp_path)
    process = dev.process().start()
    try:
        process.wait_healthy()
        created = httpx.post(
            f"{dev.product_url}/products", json={"name": "Open", "price": 1, "qty": 1}
        )
        assert created.status_code == 201
        placed = httpx.post(f"{dev.order_url}/orders", json={"product_id": created.json()["id"]})
        assert placed.status_code == 201 and "customer_id" not in placed.json()
        said = process.log_path.read_text(errors="replace")
        assert "authentication off (AUTH_MODE=off)" in said
        assert '"listening_on":"127.0.0.1"' in said  # the JSON log's line
        assert "AUTH_SIGNING_KEY" in said and "orderstack token" in said
    finally:
        process.stop()
