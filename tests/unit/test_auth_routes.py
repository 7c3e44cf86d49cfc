"""Who may do what, on the services' real apps in process (SQLite, the local bus, products
cached so the order service needs no HTTP): bearer JWTs checked as a resource server checks
them, the role guards on the routes and on their fast paths alike, orders that belong to
their customer, the OpenAPI document's security, and the seed's behaviour with auth off."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from orderstack.bootstrap import order_app, product_app
from orderstack.config import Settings, load_settings
from orderstack.infrastructure import Infrastructure
from orderstack.web.auth import SECURITY_SCHEME, Role, mint

KEY = "k" * 40  # a throwaway test key
OLD_KEY = "o" * 40
ADMIN = "s3cret-admin"  # noqa: S105 - a test value
PRODUCT, PRODUCTS = 1, 2


class Services:
    """Both services' apps on one set of adapters, with clients."""

    def __init__(self, settings: Settings, orders: httpx.AsyncClient, products: httpx.AsyncClient):
        self.settings, self.orders, self.products = settings, orders, products

    def token(self, subject: str, role: Role, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint(self.settings, subject, role, **kwargs)}"}


Make = Callable[..., "AsyncIterator[Services]"]


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    opened: list[tuple[Any, Infrastructure]] = []

    async def make(**env: str) -> Services:
        settings = load_settings(
            DATABASE_URL=f"sqlite:///{tmp_path / 'orderstack.db'}",
            LOCAL_BUS_PATH=str(tmp_path / "bus.db"),
            ADMIN_TOKEN=ADMIN,
            **env,
        )
        infra = Infrastructure.from_settings(settings, both_services=True)
        apps = order_app(settings, infra), product_app(settings, infra)
        clients = []
        for app in apps:
            lifespan = app.router.lifespan_context(app)
            await lifespan.__aenter__()
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test"
            )
            opened.append((lifespan, infra))
            clients.append(client)
        services = Services(settings, clients[0], clients[1])
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for _ in range(PRODUCTS):  # ids 1 and 2; cached by the product service as created
            new = {"name": "Cached", "price": 2.5, "qty": 99}
            assert (await services.products.post("/products", json=new, headers=admin)).is_success
        return services

    yield make
    for lifespan, _ in reversed(opened):
        await lifespan.__aexit__(None, None, None)
    for infra in {id(i): i for _, i in opened}.values():
        await infra.close()


JWT_ON = {"AUTH_SIGNING_KEY": KEY}


def _forged(settings: Settings, key: str = KEY, **claims: Any) -> dict[str, str]:
    now = int(time.time())
    body = {
        "sub": "mallory",
        "role": "admin",
        "iss": settings.AUTH_ISSUER,
        "aud": settings.AUTH_AUDIENCE,
        "iat": now,
        "exp": now + 60,
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    token = jwt.encode(body, key, algorithm="HS256", headers={"kid": "k1"})
    return {"Authorization": f"Bearer {token}"}


ORDER = {"product_id": PRODUCT, "quantity": 2}


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body


# -- authentication ------------------------------------------------------------------------


async def test_without_a_token_every_order_route_is_401_with_a_bearer_challenge(
    services: Callable[..., Any],
) -> None:
    s = await services(**JWT_ON)
    calls = [
        s.orders.post("/orders", json=ORDER),  # the fast path's
        s.orders.post("/orders", json=ORDER, headers={"Idempotency-Key": "k-1"}),  # the route's
        s.orders.get("/orders"),
        s.orders.get("/orders/1"),
        s.orders.post("/orders/1/cancel"),
        s.orders.get(f"/orders/product/{PRODUCT}"),
        s.orders.post("/admin/cache/warmup", json={"product_ids": [PRODUCT]}),
    ]
    for call in calls:
        response = await call
        assert response.status_code == 401, (response.request.url, response.text)
        assert response.json()["code"] == "UNAUTHORIZED"
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert (await s.orders.get("/orders", headers=s.token("staff-1", Role.STAFF))).json() == []


@pytest.mark.parametrize(
    ("case", "claims", "says"),
    [
        ("expired", {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "expired"),
        ("other audience", {"aud": "another-service"}, "audience"),
        ("other issuer", {"iss": "https://evil.example"}, "issuer"),
        ("no subject", {"sub": None}, "sub"),
        ("no expiry", {"exp": None}, "exp"),
        ("unknown role", {"role": "root"}, "role"),
        ("not yet valid", {"nbf": int(time.time()) + 3600}, "not yet valid"),
    ],
)
async def test_a_token_that_does_not_check_out_is_401_saying_why(
    services: Callable[..., Any], case: str, claims: dict[str, Any], says: str
) -> None:
    s = await services(**JWT_ON)

    response = await s.orders.post("/orders", json=ORDER, headers=_forged(s.settings, **claims))

    assert response.status_code == 401, case
    assert says in response.json()["error"], response.json()
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert (await s.orders.get("/orders", headers=s.token("staff", Role.STAFF))).json() == []


async def test_a_token_signed_with_another_key_or_none_is_401(
    services: Callable[..., Any],
) -> None:
    s = await services(**JWT_ON)
    unsigned = jwt.encode(
        {"sub": "mallory", "role": "admin", "iss": "orderstack", "aud": "orderstack"},
        None,
        algorithm="none",
    )
    for headers in (
        _forged(s.settings, key="x" * 40),
        {"Authorization": f"Bearer {unsigned}"},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Bearer {KEY}"},  # the key itself is no token
    ):
        response = await s.orders.post(
            "/admin/cache/warmup", json={"product_ids": [PRODUCT]}, headers=headers
        )
        assert response.status_code == 401, response.text


async def test_the_leeway_takes_a_clock_a_little_behind(services: Callable[..., Any]) -> None:
    s = await services(**JWT_ON, AUTH_LEEWAY_SECONDS="30")
    just_expired = _forged(s.settings, role="customer", exp=int(time.time()) - 5)

    assert (await s.orders.post("/orders", json=ORDER, headers=just_expired)).status_code == 201


async def test_keys_rotate_by_kid(services: Callable[..., Any]) -> None:
    """The new key signs; a token of the old key (its kid) still checks out until the old
    key is dropped from the list; a kid not in the list is refused."""
    s = await services(AUTH_SIGNING_KEY=f"new:{KEY},old:{OLD_KEY}")
    now = int(time.time())
    claims = {"sub": "ann", "role": "customer", "iss": "orderstack", "aud": "orderstack"}
    claims |= {"iat": now, "exp": now + 60}

    def signed(key: str, kid: str) -> dict[str, str]:
        token = jwt.encode(claims, key, algorithm="HS256", headers={"kid": kid})
        return {"Authorization": f"Bearer {token}"}

    assert jwt.get_unverified_header(mint(s.settings, "ann", Role.CUSTOMER))["kid"] == "new"
    assert (await s.orders.get("/orders", headers=signed(OLD_KEY, "old"))).status_code == 200
    assert (await s.orders.get("/orders", headers=signed(KEY, "new"))).status_code == 200
    assert (await s.orders.get("/orders", headers=signed(OLD_KEY, "new"))).status_code == 401
    assert (await s.orders.get("/orders", headers=signed(KEY, "gone"))).status_code == 401


# -- authorisation ---------------------------------------------------------------------


async def test_orders_belong_to_their_customer(services: Callable[..., Any]) -> None:
    """Another customer's order is 404 to read and to cancel, missing from its lists and
    from the product's; staff see and cancel every order."""
    s = await services(**JWT_ON)
    ann, bob = s.token("ann", Role.CUSTOMER), s.token("bob", Role.CUSTOMER)
    staff = s.token("clerk", Role.STAFF)

    placed = [
        (await s.orders.post("/orders", json=ORDER, headers=ann)).json(),  # the fast path
        (
            await s.orders.post("/orders", json=ORDER, headers={**ann, "Idempotency-Key": "ann-2"})
        ).json(),  # the route
    ]
    bobs = (await s.orders.post("/orders", json=ORDER, headers=bob)).json()
    assert [o["customer_id"] for o in placed] == ["ann", "ann"] and bobs["customer_id"] == "bob"

    for order in placed:
        assert (await s.orders.get(f"/orders/{order['id']}", headers=bob)).status_code == 404
        cancel = await s.orders.post(f"/orders/{order['id']}/cancel", headers=bob)
        assert cancel.status_code == 404
        assert (await s.orders.get(f"/orders/{order['id']}", headers=ann)).json()["status"] == (
            "pending"
        )
    assert [o["id"] for o in (await s.orders.get("/orders", headers=bob)).json()] == [bobs["id"]]
    mine = await s.orders.get(f"/orders/product/{PRODUCT}", headers=ann)
    assert [o["id"] for o in mine.json()] == [o["id"] for o in placed]
    every = await s.orders.get("/orders", headers=staff)
    assert sorted(o["id"] for o in every.json()) == sorted([*(o["id"] for o in placed), bobs["id"]])
    cancelled = await s.orders.post(f"/orders/{bobs['id']}/cancel", headers=staff)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


async def test_an_idempotency_key_is_the_customers_own(services: Callable[..., Any]) -> None:
    """Bob reusing Ann's key is not a replay of Ann's order (which would show it to him)."""
    s = await services(**JWT_ON)
    ann, bob = s.token("ann", Role.CUSTOMER), s.token("bob", Role.CUSTOMER)
    key = {"Idempotency-Key": "shared-key"}

    first = await s.orders.post("/orders", json=ORDER, headers={**ann, **key})
    again = await s.orders.post("/orders", json=ORDER, headers={**bob, **key})

    assert first.status_code == 201
    assert again.status_code == 422 and again.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert "id" not in again.json()  # nothing of Ann's order


@pytest.mark.parametrize(
    ("role", "expected"), [(Role.CUSTOMER, 403), (Role.STAFF, 201), (Role.ADMIN, 201)]
)
async def test_products_are_changed_by_staff_and_above(
    services: Callable[..., Any], role: Role, expected: int
) -> None:
    s = await services(**JWT_ON)
    who = s.token("someone", role)
    new = {"name": "Lamp", "price": 12.5, "qty": 3}

    fast = await s.products.post("/products", json=new, headers=who)
    routed = await s.products.post(  # chunked, no length: the route's
        "/products",
        content=_chunked(b'{"name": "Lamp", "price": 12.5, "qty": 3}'),
        headers={**who, "Content-Type": "application/json"},
    )

    assert (fast.status_code, routed.status_code) == (expected, expected), fast.text
    if expected == 201:
        pid = fast.json()["id"]
        changes = [
            s.products.patch(f"/products/{pid}", json={"price": 13}, headers=who),
            s.products.post(
                f"/products/{pid}/stock-adjustments",
                json={"delta": 2, "reason": "restock"},
                headers=who,
            ),
            s.products.delete(f"/products/{pid}", headers=who),
        ]
        assert [(await c).status_code for c in changes] == [200, 201, 204]
    else:
        assert fast.json()["statusCode"] == 403  # the product service's own shape
        for change in (
            s.products.patch(f"/products/{PRODUCT}", json={"price": 1}, headers=who),
            s.products.post(
                f"/products/{PRODUCT}/stock-adjustments",
                json={"delta": -99, "reason": "theft"},
                headers=who,
            ),
            s.products.delete(f"/products/{PRODUCT}", headers=who),
        ):
            assert (await change).status_code == 403


async def test_the_admin_routes_are_the_admins(services: Callable[..., Any]) -> None:
    s = await services(**JWT_ON)
    body = {"product_ids": [PRODUCT]}
    statuses = [
        (await s.orders.post("/admin/cache/warmup", json=body, headers=s.token("x", r))).status_code
        for r in (Role.CUSTOMER, Role.STAFF, Role.ADMIN)
    ]
    by_token = await s.orders.post(
        "/admin/cache/warmup", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
    )

    assert statuses == [403, 403, 200]
    assert by_token.status_code == 200


async def test_a_cross_site_form_cannot_cancel_an_order(services: Callable[..., Any]) -> None:
    """The review's CSRF probe: a form post from another origin carries no bearer token
    (a browser never adds one by itself), so it is 401 and the order stays."""
    s = await services(**JWT_ON)
    ann = s.token("ann", Role.CUSTOMER)
    order = (await s.orders.post("/orders", json=ORDER, headers=ann)).json()

    forged = await s.orders.post(
        f"/orders/{order['id']}/cancel",
        headers={
            "Origin": "http://evil.example",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        content=b"",
    )

    assert forged.status_code == 401
    assert (await s.orders.get(f"/orders/{order['id']}", headers=ann)).json()["status"] == "pending"


async def test_the_catalog_is_open_unless_configured_otherwise(
    services: Callable[..., Any],
) -> None:
    s = await services(**JWT_ON)
    assert (await s.products.get(f"/products/{PRODUCT}")).status_code == 200  # the fast path
    assert (await s.products.get("/products")).status_code == 200

    closed = await services(**JWT_ON, AUTH_PUBLIC_CATALOG="false")
    assert (await closed.products.get(f"/products/{PRODUCT}")).status_code == 401
    assert (await closed.products.get("/products")).status_code == 401
    customer = closed.token("ann", Role.CUSTOMER)
    assert (await closed.products.get(f"/products/{PRODUCT}", headers=customer)).status_code == 200


# -- the document, and auth off --------------------------------------------------------


async def test_openapi_declares_the_bearer_scheme_on_every_guarded_route(
    services: Callable[..., Any],
) -> None:
    s = await services(**JWT_ON)
    for client, guarded in (
        (s.orders, lambda path, method: path.startswith(("/orders", "/admin/"))),
        (s.products, lambda path, method: path.startswith("/products") and method != "get"),
    ):
        document: dict[str, Any] = (await client.get("/openapi.json")).json()
        scheme = document["components"]["securitySchemes"][SECURITY_SCHEME]
        assert scheme["type"] == "http" and scheme["scheme"].lower() == "bearer"
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                expected = [{SECURITY_SCHEME: []}] if guarded(path, method) else None
                assert operation.get("security") == expected, (method, path)


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (None, 401, "UNAUTHORIZED"),
        ("Bearer", 401, "UNAUTHORIZED"),
        ("Basic czNjcmV0", 401, "UNAUTHORIZED"),
        ("Bearer wrong", 403, "FORBIDDEN"),
        (f"Bearer {ADMIN}", 200, None),
        (f"bearer {ADMIN}", 200, None),
    ],
)
async def test_with_auth_off_the_admin_token_alone_guards_the_admin_routes(
    services: Callable[..., Any], authorization: str | None, status: int, code: str | None
) -> None:
    s = await services(AUTH_MODE="off")
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await s.orders.post(
        "/admin/cache/warmup", json={"product_ids": [PRODUCT]}, headers=headers
    )

    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["code"] == code
    else:
        assert response.json() == {"cached": [PRODUCT], "not_found": []}


async def test_with_auth_off_anyone_orders_as_in_the_seed(services: Callable[..., Any]) -> None:
    s = await services(AUTH_MODE="off")

    placed = await s.orders.post("/orders", json=ORDER)

    assert placed.status_code == 201 and "customer_id" not in placed.json()
    assert (await s.orders.get(f"/orders/{placed.json()['id']}")).status_code == 200
    assert (
        await s.products.post("/products", json={"name": "A", "price": 1, "qty": 1})
    ).status_code == 201
