from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.sandbox import Sandbox
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sandbox(make_sandbox: Callable[[str], Sandbox]) -> Sandbox:
    return make_sandbox("it")


@pytest.fixture
async def engine(sandbox: Sandbox) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(
        make_url(sandbox.database_url).set(drivername="mysql+asyncmy"), pool_size=20
    )
    await migrate.upgrade(engine, "orders")
    await migrate.upgrade(engine, "products")
    yield engine
    await engine.dispose()
