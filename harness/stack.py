"""A running stack: product and order replicas as separate processes in one sandbox."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness.processes import ServiceProcess, stop_processes
from harness.sandbox import Sandbox


@dataclass
class Stack:
    sandbox: Sandbox
    log_dir: Path
    product_replicas: int = 1
    order_replicas: int = 1
    admin_token: str = "test-admin-token"  # noqa: S105 - a throwaway test value
    # The servers given in the seed's variables (DB_HOST/DB_USER/DB_PASSWORD/DB_NAME...,
    # see Sandbox.seed_env) instead of DATABASE_URL.
    seed_variables: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    products: list[ServiceProcess] = field(default_factory=list)
    orders: list[ServiceProcess] = field(default_factory=list)

    def _env(self) -> dict[str, str]:
        servers = self.sandbox.seed_env if self.seed_variables else self.sandbox.env
        return {**servers, "ADMIN_TOKEN": self.admin_token, **self.extra_env}

    def start(self) -> Stack:
        """Start the product replicas and the order replicas pointed at all of them (their
        ports are chosen beforehand, so all start at once), then wait for each to answer."""
        for i in range(self.product_replicas):
            self.products.append(
                ServiceProcess(f"product-{i}", ["serve", "product"], self._env(), self.log_dir)
            )
        for i in range(self.order_replicas):
            self.orders.append(self.order_process(f"order-{i}"))
        for process in [*self.products, *self.orders]:
            process.start()
        for process in [*self.products, *self.orders]:
            process.wait_healthy()
        return self

    def wait_ready(self, timeout: float = 15.0) -> Stack:
        """Wait until every replica's /readyz is 200 (its database and broker connected:
        start() only waits for an answer, any answer, since a dependency may be down on
        purpose). Raises TimeoutError naming the replica and its last answer."""
        deadline = time.monotonic() + timeout
        for process in [*self.products, *self.orders]:
            while True:
                try:
                    answer = httpx.get(f"{process.url}/readyz", timeout=2.0)
                    if answer.status_code == 200:
                        break
                    last = answer.text
                except httpx.HTTPError as exc:
                    last = repr(exc)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{process.name} not ready after {timeout}s: {last}")
                time.sleep(0.1)
        return self

    def order_process(self, name: str, module: str = "orderstack") -> ServiceProcess:
        """An order replica (not started) whose lookups spread over the product replicas;
        ``module`` runs another entry point taking the same arguments (a faulty service)."""
        env = {**self._env(), "PRODUCT_SERVICE_URL": ",".join(p.url for p in self.products)}
        return ServiceProcess(name, ["serve", "order"], env, self.log_dir, module=module)

    @property
    def product_url(self) -> str:
        return self.products[0].url

    @property
    def order_url(self) -> str:
        return self.orders[0].url

    def stop(self) -> None:
        """Every replica stopped at once (stop_processes): the orders' and the products'."""
        stop_processes([r.process for r in [*self.orders, *self.products] if r.process])
