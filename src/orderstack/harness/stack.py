"""A running stack: product and order replicas as separate processes in one sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orderstack.harness.processes import ServiceProcess
from orderstack.harness.sandbox import Sandbox


@dataclass
class Stack:
    sandbox: Sandbox
    log_dir: Path
    product_replicas: int = 1
    order_replicas: int = 1
    admin_token: str = "test-admin-token"  # noqa: S105 - a throwaway test value
    extra_env: dict[str, str] = field(default_factory=dict)
    products: list[ServiceProcess] = field(default_factory=list)
    orders: list[ServiceProcess] = field(default_factory=list)

    def _env(self) -> dict[str, str]:
        return {**self.sandbox.env, "ADMIN_TOKEN": self.admin_token, **self.extra_env}

    def start(self) -> Stack:
        """Start the product replicas, then the order replicas pointed at all of them."""
        for i in range(self.product_replicas):
            self.products.append(
                ServiceProcess(f"product-{i}", ["serve", "product"], self._env(), self.log_dir)
            )
        for process in self.products:
            process.start()
        for process in self.products:
            process.wait_healthy()
        for i in range(self.order_replicas):
            self.orders.append(self.order_process(f"order-{i}"))
        for process in self.orders:
            process.start()
        for process in self.orders:
            process.wait_healthy()
        return self

    def order_process(self, name: str) -> ServiceProcess:
        """An order replica (not started) whose lookups spread over the product replicas."""
        env = {**self._env(), "PRODUCT_SERVICE_URL": ",".join(p.url for p in self.products)}
        return ServiceProcess(name, ["serve", "order"], env, self.log_dir)

    @property
    def product_url(self) -> str:
        return self.products[0].url

    @property
    def order_url(self) -> str:
        return self.orders[0].url

    def stop(self) -> None:
        for process in [*self.orders, *self.products]:
            process.stop()
