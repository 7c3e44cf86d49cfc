"""Product names and adjustment reasons are plain text: one spelling per text (NFC), and
no control or format character (a NUL, a zero-width mark, a right-to-left override) is
ever stored: 400, nothing changed."""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator

import httpx
import pytest

from orderstack.products.api import product_router
from orderstack.products.service import ProductService
from tests.unit.fakes import FakeProductDatabase
from tests.unit.routes import open_access, route_client


@pytest.fixture
async def http(product_service: ProductService) -> AsyncIterator[httpx.AsyncClient]:
    async with route_client(
        product_router(open_access()), "nest", products=product_service
    ) as client:
        yield client


HOSTILE = [
    "Lamp\x00",  # NUL: PostgreSQL refuses it (was a 500)
    "Lamp\u200b",  # zero-width space
    "\u202eLamp",  # right-to-left override
    "La\x1b[31mmp",  # terminal escape
    "Lamp\u2028two",  # line separator
    "Lamp\ufeff",  # byte order mark (a format character)
    "Lamp\ue000",  # private use
]


@pytest.mark.parametrize("name", HOSTILE)
async def test_a_name_with_a_control_or_format_character_is_400_and_nothing_is_stored(
    http: httpx.AsyncClient, product_db: FakeProductDatabase, name: str
) -> None:
    response = await http.post("/products", json={"name": name, "price": 5, "qty": 1})

    assert response.status_code == 400, response.text
    assert any("control or format characters" in m for m in response.json()["message"])
    assert product_db.products.rows == {}


async def test_a_name_is_stored_in_nfc_and_plain_unicode_is_kept(
    http: httpx.AsyncClient, product_db: FakeProductDatabase
) -> None:
    decomposed = unicodedata.normalize("NFD", "Café crème — 東京 ✓")
    assert decomposed != "Café crème — 東京 ✓"

    response = await http.post("/products", json={"name": decomposed, "price": 5, "qty": 1})

    assert response.status_code == 201, response.text
    assert response.json()["name"] == "Café crème — 東京 ✓"
    [stored] = product_db.products.rows.values()
    assert stored.name == "Café crème — 東京 ✓"


async def test_a_patch_and_an_adjustment_reason_are_checked_alike(
    http: httpx.AsyncClient, product_db: FakeProductDatabase
) -> None:
    created = (await http.post("/products", json={"name": "Lamp", "price": 5, "qty": 1})).json()

    patched = await http.patch(f"/products/{created['id']}", json={"name": "La\u202emp"})
    adjusted = await http.post(
        f"/products/{created['id']}/stock-adjustments", json={"delta": 1, "reason": "re\x00stock"}
    )

    assert (patched.status_code, adjusted.status_code) == (400, 400)
    [stored] = product_db.products.rows.values()
    assert (stored.name, stored.qty, stored.version) == ("Lamp", 1, 1)
