"""``make compose-test``: the docker-compose stack, built, started and used for real.

1. Makes what it needs when missing (harness/compose_images.py): a Docker engine, compose
   v2, the images (upstream where present or pullable, else stand-ins from deploy/images/
   on a debootstrapped Debian bookworm base, both kept between runs).
2. Builds the project's image from the Dockerfile with ``docker compose build`` (on the
   python image chosen above).
3. Starts the stack under a unique project name, every host port a free one on 127.0.0.1,
   authentication on (the .env.example values), and runs the seed's README flows through
   HAProxy on the order and product ports.
4. Scales to 3 order and 2 product replicas and sends orders through HAProxy while one
   replica of each is killed (``docker kill``): every order the client was answered 201 for
   is settled, none twice, none lost (counted in MariaDB), no unit oversold.
5. ``docker compose stop``: every container exits 0 within its stop_grace_period.
6. ``down`` then ``up``: the orders, the products and the broker's users are still there.
7. The RabbitMQ management UI and API, Prometheus' UI, targets and rules, and every query
   of the Grafana dashboard run on that Prometheus.

It prints what it did with its figures (and writes them to var/compose-test.json), and in a
``finally``, also on Ctrl-C, SIGTERM or its hard time limit, removes the project's
containers, networks and volumes. It keeps the base and stand-in images and the project
image (its layers make the next build fast); dockerd, if it started it, is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from harness import compose_images
from harness.compose_images import ROOT, run

APP_IMAGE = "orderstack-composetest:latest"
REPORT_PATH = ROOT / "var" / "compose-test.json"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "orderstack.json"
# Host ports the compose file lets a variable choose, each given a free one here.
PORT_VARIABLES = (
    "ORDER_HOST_PORT",
    "PRODUCT_HOST_PORT",
    "MYSQL_HOST_PORT",
    "REDIS_HOST_PORT",
    "RABBITMQ_HOST_PORT",
    "RABBITMQ_MANAGEMENT_HOST_PORT",
    "PROMETHEUS_HOST_PORT",
    "GRAFANA_HOST_PORT",
)
APP_SERVICES = ("order-service", "product-service")
SETTLED = ("confirmed", "failed")


def say(message: str) -> None:
    print(f"[compose-test] {message}", flush=True)


class HardLimit(Exception):
    """The whole run's time limit passed."""


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    ok: bool = False


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        step = Step(name)
        self.steps.append(step)
        say(f"-- {name}")
        started = time.monotonic()
        try:
            yield step
            step.ok = True
        finally:
            step.seconds = time.monotonic() - started
            state = "ok" if step.ok else "FAILED"
            say(f"   {state} in {step.seconds:.1f} s: {json.dumps(step.figures, default=str)}")


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held open together, so no two are the same)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def example_values() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def duration_seconds(text: str | None, default: float = 10.0) -> float:
    """A compose duration ("20s", "1m30s", "1.5s") in seconds."""
    if not text:
        return default
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", text))


class Stack:
    """One compose project: the file, a unique name, an env file of its own."""

    def __init__(self, project: str, env_file: Path, values: dict[str, str]) -> None:
        self.project = project
        self.env_file = env_file
        self.values = values
        # Volumes seen mounted in the project's containers: anonymous ones (an image's
        # VOLUME) carry no project label, and `down -v` forgets those of removed containers.
        self.volumes: set[str] = set()

    def compose(
        self, *args: str, timeout: float, check: bool = True, env: dict[str, str] | None = None
    ) -> str:
        command = ["docker", "compose", "-p", self.project, "--project-directory", str(ROOT)]
        command += ["-f", str(compose_images.COMPOSE_FILE), "--env-file", str(self.env_file)]
        return run([*command, *args], timeout=timeout, check=check, env=env).stdout

    def config(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(
            self.compose("config", "--format", "json", timeout=60)
        )
        return document

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        filters = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = run(["docker", "ps", "-aq", *filters], timeout=30).stdout.split()
        if not ids:
            return []
        found: list[dict[str, Any]] = json.loads(
            run(["docker", "inspect", *ids], timeout=30).stdout
        )
        for container in found:
            self.volumes |= {m["Name"] for m in container["Mounts"] if m["Type"] == "volume"}
        return found

    def remove_volumes_seen(self) -> int:
        """The volumes the project's containers had that are still there, removed."""
        existing = set(run(["docker", "volume", "ls", "-q"], timeout=30).stdout.split())
        for name in sorted(self.volumes & existing):
            run(["docker", "volume", "rm", name], timeout=60, check=False)
        left = set(run(["docker", "volume", "ls", "-q"], timeout=30).stdout.split())
        return len(self.volumes & left)

    def leftovers(self) -> dict[str, int]:
        label = f"label=com.docker.compose.project={self.project}"
        counts = {}
        for kind, command in (
            ("containers", ["docker", "ps", "-aq", "--filter", label]),
            ("volumes", ["docker", "volume", "ls", "-q", "--filter", label]),
            ("networks", ["docker", "network", "ls", "-q", "--filter", label]),
        ):
            counts[kind] = len(run(command, timeout=30, check=False).stdout.split())
        return counts

    def url(self, variable: str) -> str:
        return f"http://127.0.0.1:{self.values[variable]}"

    def sql(self, query: str) -> str:
        """One query as the application user, in the mysql container."""
        name = self.values["MYSQL_CONTAINER_NAME"]
        password = self.values["MYSQL_PASSWORD"]
        return run(
            ["docker", "exec", "-e", f"MYSQL_PWD={password}", name]
            + ["mariadb", "-uorderuser", "-N", "-B", "orderdb", "-e", query],
            timeout=60,
        ).stdout.strip()


def mint_token(subject: str, signing_key: str) -> str:
    env = {**os.environ, "AUTH_SIGNING_KEY": signing_key}
    result = run(
        [sys.executable, "-m", "orderstack", "token", subject, "--role", "customer"],
        timeout=60,
        env=env,
        cwd=Path(tempfile.gettempdir()),  # no .env of the work tree read
    )
    return result.stdout.strip()


def wait_settled(client: httpx.Client, order_id: int, token: str, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        answer = client.get(f"/orders/{order_id}", headers={"Authorization": f"Bearer {token}"})
        body: dict[str, Any] = answer.json()
        if answer.status_code == 200 and body["status"] in SETTLED:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"order {order_id} not settled in {seconds} s: {body}")
        time.sleep(0.1)


# -- the steps ----------------------------------------------------------------------------


def seed_flows(stack: Stack, step: Step) -> dict[str, Any]:
    """The README's curl examples through HAProxy, with authentication on."""
    admin = {"Authorization": f"Bearer {stack.values['ADMIN_TOKEN']}"}
    alice = mint_token("alice", stack.values["AUTH_SIGNING_KEY"])
    bob = mint_token("bob", stack.values["AUTH_SIGNING_KEY"])
    as_alice = {"Authorization": f"Bearer {alice}"}
    orders = httpx.Client(base_url=stack.url("ORDER_HOST_PORT"), timeout=10)
    products = httpx.Client(base_url=stack.url("PRODUCT_HOST_PORT"), timeout=10)
    with orders, products:
        laptop = {"name": "Gaming Laptop", "price": 2999.99, "qty": 5}
        refused = products.post("/products", json=laptop)
        assert refused.status_code == 401, refused.text
        created = products.post("/products", json=laptop, headers=admin)
        assert created.status_code == 201, created.text
        product_id = created.json()["id"]
        anonymous = orders.post("/orders", json={"product_id": product_id, "total_price": 2999.99})
        assert anonymous.status_code == 401, anonymous.text
        started = time.monotonic()
        placed = orders.post(
            "/orders", json={"product_id": product_id, "total_price": 2999.99}, headers=as_alice
        )
        assert placed.status_code == 201, placed.text
        first = placed.json()
        assert first["status"] in ("pending", "confirmed"), first
        settled = wait_settled(orders, first["id"], alice)
        settle_ms = (time.monotonic() - started) * 1000
        assert settled["status"] == "confirmed", settled
        qty = products.get(f"/products/{product_id}").json()["qty"]
        assert qty == 4, qty
        basket = orders.post(
            "/orders", json={"items": [{"product_id": product_id, "quantity": 2}]}, headers=as_alice
        )
        assert basket.status_code == 201, basket.text
        assert wait_settled(orders, basket.json()["id"], alice)["status"] == "confirmed"
        assert products.get(f"/products/{product_id}").json()["qty"] == 2
        stale = orders.post(
            "/orders", json={"product_id": product_id, "total_price": 1.0}, headers=as_alice
        )
        assert stale.status_code == 201, stale.text
        failed = wait_settled(orders, stale.json()["id"], alice)
        assert failed["status"] == "failed", failed
        assert (failed.get("failure") or {}).get("reason") == "price_changed", failed
        assert products.get(f"/products/{product_id}").json()["qty"] == 2
        not_bobs = orders.get(f"/orders/{first['id']}", headers={"Authorization": f"Bearer {bob}"})
        assert not_bobs.status_code in (403, 404), not_bobs.status_code
    step.figures.update(
        {
            "writes without a token": "401",
            "first order settled in ms": round(settle_ms),
            "laptop qty after 1 + 2 units": 2,
            "order at a stale price": f"failed ({(failed.get('failure') or {}).get('reason')})",
            "another customer reading it": not_bobs.status_code,
        }
    )
    return {"order_id": first["id"], "product_id": product_id, "alice": alice}


@dataclass
class LoadOutcome:
    accepted: dict[str, int] = field(default_factory=dict)  # idempotency key -> order id
    product_of: dict[str, int] = field(default_factory=dict)
    retries: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)


async def send_order(
    client: httpx.AsyncClient,
    outcome: LoadOutcome,
    token: str,
    product_id: int,
    deadline_seconds: float,
) -> None:
    """One order, retried with the same Idempotency-Key past dead replicas, 502s and 503s,
    as a client would."""
    key = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            answer = await client.post(
                "/orders", json={"product_id": product_id, "quantity": 1}, headers=headers
            )
        except httpx.TransportError as error:
            reason = type(error).__name__
        else:
            if answer.status_code in (200, 201):
                outcome.accepted[key] = answer.json()["id"]
                outcome.product_of[key] = product_id
                return
            if answer.status_code not in (502, 503, 504):
                outcome.refused[f"{answer.status_code} {answer.text[:80]}"] += 1
                return
            reason = str(answer.status_code)
        outcome.retries[reason] += 1
        if time.monotonic() > deadline:
            outcome.refused[f"gave up after {reason}"] += 1
            return
        await asyncio.sleep(0.25)


async def drive_load(
    stack: Stack, token: str, products: list[int], orders: int, rate: float, kill_after: float
) -> tuple[LoadOutcome, dict[str, Any]]:
    outcome = LoadOutcome()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    killed: dict[str, Any] = {}

    async def kill() -> None:
        await asyncio.sleep(kill_after)
        for service in APP_SERVICES:
            replicas = await asyncio.to_thread(stack.containers, service)
            victims = sorted(c["Name"].lstrip("/") for c in replicas)
            victim = victims[-1]
            # kill -9 of its process from the host: a crash, which the restart policy
            # answers (`docker kill` counts as an operator's stop: no restart).
            inspected = await asyncio.to_thread(run, ["docker", "inspect", victim], timeout=30)
            os.kill(json.loads(inspected.stdout)[0]["State"]["Pid"], signal.SIGKILL)
            killed[service] = {"container": victim, "at_s": round(kill_after, 1)}
            say(f"   killed {victim} (kill -9 of its process) {kill_after:.0f} s into the load")

    async with httpx.AsyncClient(
        base_url=stack.url("ORDER_HOST_PORT"), timeout=10, limits=limits
    ) as client:
        killer = asyncio.create_task(kill())
        tasks = []
        started = time.monotonic()
        for i in range(orders):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            product = products[i % len(products)]
            tasks.append(asyncio.create_task(send_order(client, outcome, token, product, 60)))
        await asyncio.gather(*tasks)
        await killer
        killed["load_s"] = round(time.monotonic() - started, 1)
    return outcome, killed


async def settle_all(
    stack: Stack, token: str, ids: list[int], seconds: float
) -> tuple[Counter[str], dict[int, str]]:
    statuses: dict[int, str] = {}
    gate = asyncio.Semaphore(16)
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {token}"}

    async def one(client: httpx.AsyncClient, order_id: int) -> None:
        async with gate:
            while True:
                try:
                    answer = await client.get(f"/orders/{order_id}", headers=headers)
                    if answer.status_code == 200:
                        statuses[order_id] = answer.json()["status"]
                        if statuses[order_id] in SETTLED:
                            return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.5)

    async with httpx.AsyncClient(base_url=stack.url("ORDER_HOST_PORT"), timeout=10) as client:
        await asyncio.gather(*(one(client, order_id) for order_id in ids))
    return Counter(statuses.values()), statuses


def replicas_and_kills(
    stack: Stack, step: Step, services: list[str], args: Any, kept: dict[str, Any]
) -> None:
    admin = {"Authorization": f"Bearer {stack.values['ADMIN_TOKEN']}"}
    stack.compose(
        "up", "-d", "--no-build", "--wait", "--wait-timeout", "240",
        "--scale", "order-service=3", "--scale", "product-service=2", *services,
        timeout=300,
    )  # fmt: skip
    running = {s: len(stack.containers(s)) for s in APP_SERVICES}
    assert running == {"order-service": 3, "product-service": 2}, running
    time.sleep(6)  # HAProxy's DNS (hold valid 5 s) and health checks find the new replicas
    stock = args.stock
    with httpx.Client(base_url=stack.url("PRODUCT_HOST_PORT"), timeout=10) as products:
        ids = []
        for i in range(3):
            answer = products.post(
                "/products", json={"name": f"load {i}", "price": 5, "qty": stock}, headers=admin
            )
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
    token = mint_token("loader", stack.values["AUTH_SIGNING_KEY"])
    outcome, killed = asyncio.run(
        drive_load(stack, token, ids, args.orders, args.rate, args.kill_after)
    )
    accepted_ids = list(outcome.accepted.values())
    counts, statuses = asyncio.run(settle_all(stack, token, accepted_ids, 120))
    with httpx.Client(base_url=stack.url("PRODUCT_HOST_PORT"), timeout=10) as products:
        left = {pid: products.get(f"/products/{pid}").json()["qty"] for pid in ids}
    confirmed_units = Counter(
        outcome.product_of[key]
        for key, order_id in outcome.accepted.items()
        if statuses.get(order_id) == "confirmed"
    )
    in_database = int(stack.sql("SELECT COUNT(*) FROM orders WHERE customer_id = 'loader'"))
    kept["orders"] = stack.sql("SELECT COUNT(*) FROM orders")
    kept["products"] = stack.sql("SELECT COUNT(*) FROM products")
    restarted = {
        s: [c["RestartCount"] for c in stack.containers(s)] for s in APP_SERVICES
    }  # the restart policy brings a killed replica back
    step.figures.update(
        {
            "replicas": running,
            "orders sent": args.orders,
            "rate per s": args.rate,
            "load s": killed.pop("load_s"),
            "killed": killed,
            "accepted (201)": len(accepted_ids),
            "retried answers": dict(outcome.retries),
            "refused": dict(outcome.refused),
            "settled": dict(counts),
            "orders in MariaDB": in_database,
            "stock per product": stock,
            "left per product": list(left.values()),
            "restart counts": restarted,
        }
    )
    assert not outcome.refused, outcome.refused
    assert len(accepted_ids) == args.orders, "an order was never accepted"
    assert len(set(accepted_ids)) == len(accepted_ids), "two keys gave one order"
    unsettled = [i for i in accepted_ids if statuses.get(i) not in SETTLED]
    assert not unsettled, f"accepted but not settled: {unsettled[:20]}"
    assert in_database == len(accepted_ids), "orders in the database differ from those accepted"
    for service, counts_ in restarted.items():  # each crash answered by the restart policy
        assert sum(counts_) >= 1, f"{service}: the killed replica was not restarted"
    for pid in ids:
        assert left[pid] == stock - confirmed_units[pid], (pid, left[pid], confirmed_units[pid])
        assert left[pid] >= 0
    # The killed replicas back (restart policy), or started again by compose.
    stack.compose(
        "up", "-d", "--no-build", "--wait", "--wait-timeout", "240",
        "--scale", "order-service=3", "--scale", "product-service=2", *services,
        timeout=300,
    )  # fmt: skip


def docker_events(project: str, since: float, until: float) -> list[dict[str, Any]]:
    result = run(
        ["docker", "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}"]
        + ["--filter", "type=container", "--filter", f"label=com.docker.compose.project={project}"]
        + ["--format", "{{json .}}"],
        timeout=60,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def stop_all(stack: Stack, step: Step) -> None:
    grace = {
        name: duration_seconds(service.get("stop_grace_period"))
        for name, service in stack.config()["services"].items()
    }
    ids = {c["Id"]: c for c in stack.containers()}
    since = time.time()
    started = time.monotonic()
    stack.compose("stop", timeout=240)
    total = time.monotonic() - started
    until = time.time() + 1
    events = docker_events(stack.project, since - 1, until)
    first_kill: dict[str, int] = {}
    died: dict[str, int] = {}
    for event in events:
        cid, action = (
            event.get("id") or event["Actor"]["ID"],
            event.get("Action", event.get("status")),
        )
        if action == "kill":
            first_kill.setdefault(cid, event["timeNano"])
        elif action == "die":
            died[cid] = event["timeNano"]
    rows = {}
    failures = []
    for cid, before in ids.items():
        after = json.loads(run(["docker", "inspect", cid], timeout=30).stdout)[0]
        name = before["Name"].lstrip("/")
        service = before["Config"]["Labels"]["com.docker.compose.service"]
        code = after["State"]["ExitCode"]
        seconds = (died.get(cid, 0) - first_kill.get(cid, 0)) / 1e9
        rows[name] = {"exit": code, "stop_s": round(seconds, 2), "grace_s": grace[service]}
        if code != 0 or not 0 <= seconds < grace[service] or cid not in died:
            failures.append(name)
    step.figures.update({"compose stop s": round(total, 1), "containers": rows})
    assert not failures, f"not exited 0 within the grace period: {failures}"


def down_and_up(stack: Stack, step: Step, services: list[str], kept: dict[str, Any]) -> None:
    before_orders, before_products = kept["orders"], kept["products"]
    stack.compose("down", "--timeout", "30", timeout=240)
    left = stack.leftovers()
    assert left["containers"] == 0 and left["networks"] == 0, left
    assert left["volumes"] >= 3, left  # mysql-data, rabbitmq-data, prometheus-data kept
    started = time.monotonic()
    stack.compose(
        "up", "-d", "--no-build", "--wait", "--wait-timeout", "240", *services, timeout=300
    )
    up_s = time.monotonic() - started
    after_orders = stack.sql("SELECT COUNT(*) FROM orders")
    after_products = stack.sql("SELECT COUNT(*) FROM products")
    with httpx.Client(base_url=stack.url("ORDER_HOST_PORT"), timeout=10) as orders:
        first = orders.get(
            f"/orders/{kept['order_id']}", headers={"Authorization": f"Bearer {kept['alice']}"}
        )
    with httpx.Client(base_url=stack.url("PRODUCT_HOST_PORT"), timeout=10) as products:
        laptop = products.get(f"/products/{kept['product_id']}")
    step.figures.update(
        {
            "volumes kept by down": left["volumes"],
            "up again s": round(up_s, 1),
            "orders before/after": f"{before_orders}/{after_orders}",
            "products before/after": f"{before_products}/{after_products}",
            "first order after up": first.json().get("status"),
            "laptop qty after up": laptop.json().get("qty"),
        }
    )
    assert (before_orders, before_products) == (after_orders, after_products)
    assert first.status_code == 200 and first.json()["status"] == "confirmed", first.text
    assert laptop.json()["qty"] == 2, laptop.text


def dashboard_queries() -> list[str]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = []
    stack_: list[dict[str, Any]] = list(document["panels"])
    while stack_:
        panel = stack_.pop()
        stack_.extend(panel.get("panels", []))
        exprs += [t["expr"].replace("$__rate_interval", "1m") for t in panel.get("targets", [])]
    return exprs


def management_and_prometheus(stack: Stack, step: Step) -> None:
    admin = (stack.values["RABBITMQ_ADMIN_USER"], stack.values["RABBITMQ_ADMIN_PASSWORD"])
    with httpx.Client(base_url=stack.url("RABBITMQ_MANAGEMENT_HOST_PORT"), timeout=10) as ui:
        page = ui.get("/")
        assert page.status_code == 200 and "RabbitMQ Management" in page.text, page.text[:200]
        assert ui.get("/api/overview").status_code == 401
        overview = ui.get("/api/overview", auth=admin)
        assert overview.status_code == 200, overview.text
        users = sorted(u["name"] for u in ui.get("/api/users", auth=admin).json())
        # Each service's queue consumed (the API's counts are refreshed every 5 s).
        deadline = time.monotonic() + 30
        while True:
            listed = ui.get("/api/queues", auth=admin).json()
            queues = {q["name"]: q.get("consumers", 0) for q in listed}
            if queues.get("order-service.events") and queues.get("product-service.events"):
                break
            assert time.monotonic() < deadline, queues
            time.sleep(1)
    assert "guest" not in users, users
    prometheus_url = stack.url("PROMETHEUS_HOST_PORT")
    with httpx.Client(base_url=prometheus_url, timeout=10, follow_redirects=True) as prom:
        assert prom.get("/-/ready").status_code == 200
        graph = prom.get("/graph")
        assert graph.status_code == 200, graph.status_code
        deadline = time.monotonic() + 60
        while True:  # a first scrape of both jobs (every 15 s)
            targets = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in targets}
            if set(health) >= set(APP_SERVICES) and all(health[j] == "up" for j in APP_SERVICES):
                break
            assert time.monotonic() < deadline, health
            time.sleep(2)
        rules = prom.get("/api/v1/rules").json()["data"]["groups"]
        answered, with_data = 0, 0
        for expr in dashboard_queries():
            answer = prom.get("/api/v1/query", params={"query": expr}).json()
            assert answer["status"] == "success", (expr, answer)
            answered += 1
            with_data += bool(answer["data"]["result"])
    step.figures.update(
        {
            "management UI": "200, login required for the API",
            "broker users": users,
            "queue consumers": {q: queues[q] for q in sorted(queues) if not q.endswith("dlq")},
            "prometheus targets": health,
            "alert rule groups": len(rules),
            "dashboard queries accepted": answered,
            "of which with data": with_data,
        }
    )


# -- the run ------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.compose_test", description=__doc__)
    parser.add_argument("--orders", type=int, default=600, help="orders sent under the kills")
    parser.add_argument("--rate", type=float, default=40.0, help="orders per second")
    parser.add_argument("--stock", type=int, default=100, help="units of each of 3 products")
    parser.add_argument("--kill-after", type=float, default=5.0, help="seconds into the load")
    parser.add_argument("--no-pull", action="store_true", help="never try a registry")
    parser.add_argument(
        "--limit-seconds", type=int, default=900, help="hard limit of the whole run"
    )
    return parser.parse_args(argv)


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def raise_limit(signum: int, frame: FrameType | None) -> None:
    raise HardLimit("the run's hard time limit passed")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGALRM, raise_limit)
    signal.alarm(args.limit_seconds)
    report = Report()
    started = time.monotonic()
    stack: Stack | None = None
    scratch = tempfile.TemporaryDirectory(prefix="compose-test-")
    failed: BaseException | None = None
    try:
        with report.step("engine and compose") as step:
            step.figures["engine"] = compose_images.ensure_engine(say)
            step.figures["compose"] = compose_images.ensure_compose(say)
        with report.step("images") as step:
            choices = compose_images.resolve_images(pull=not args.no_pull, log=say)
            step.figures.update({c.upstream: f"{c.image} ({c.how})" for c in choices})
            images = {c.variable: c.image for c in choices if c.image}
        project = f"orderstack-ct-{secrets.token_hex(3)}"
        values = example_values()
        values.update({k: v for k, v in images.items() if v})
        ports = free_ports(len(PORT_VARIABLES))
        values.update({name: str(port) for name, port in zip(PORT_VARIABLES, ports, strict=True)})
        values.update(
            {
                "ORDERSTACK_IMAGE": APP_IMAGE,
                "HTTP_BIND_ADDRESS": "127.0.0.1",
                "MYSQL_CONTAINER_NAME": f"{project}-mysql",
                "RABBITMQ_CONTAINER_NAME": f"{project}-rabbitmq",
            }
        )
        env_file = Path(scratch.name) / "compose.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
        stack = Stack(project, env_file, values)
        services = [
            name
            for name, service in stack.config()["services"].items()
            if "grafana" not in name or "GRAFANA_IMAGE" in images
        ]
        with report.step("project image from the Dockerfile (docker compose build)") as step:
            # The compose file's build: the Dockerfile, PYTHON_IMAGE as its base, tagged
            # ORDERSTACK_IMAGE (both services' image: the second build is the first's cache).
            # The classic builder: BuildKit would fetch the Dockerfile's `# syntax=` frontend
            # image from Docker Hub, which no registry-less machine can.
            classic = {**os.environ, "DOCKER_BUILDKIT": "0"}
            previous = compose_images.image_id(APP_IMAGE)
            stack.compose("build", *APP_SERVICES, timeout=900, env=classic)
            if previous and previous != compose_images.image_id(APP_IMAGE):
                # The previous build, untagged now: removed (only this run's is kept).
                run(["docker", "rmi", previous], timeout=120, check=False)
            step.figures["image"] = APP_IMAGE
            step.figures["on"] = images["PYTHON_IMAGE"]
        with report.step("up, and the seed's flows through HAProxy") as step:
            t0 = time.monotonic()
            stack.compose(
                "up", "-d", "--no-build", "--wait", "--wait-timeout", "300", *services, timeout=360
            )
            step.figures["project"] = project
            step.figures["services"] = services
            step.figures["up --wait s"] = round(time.monotonic() - t0, 1)
            kept = seed_flows(stack, step)
        with report.step("3 order + 2 product replicas, one of each killed under load") as step:
            replicas_and_kills(stack, step, services, args, kept)
        with report.step("docker compose stop") as step:
            stop_all(stack, step)
        with report.step("down, then up: the data is still there") as step:
            down_and_up(stack, step, services, kept)
        with report.step("RabbitMQ management UI and Prometheus") as step:
            management_and_prometheus(stack, step)
    except BaseException as error:  # reported below; KeyboardInterrupt and the limit too
        failed = error
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up is not interrupted
        signal.alarm(0)
        if stack is not None:
            with report.step("clean-up") as step:
                try:
                    stack.containers()  # their volumes noted, anonymous ones too
                    stack.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=240)
                except Exception as error:  # still count what is left, and say so
                    step.figures["down failed"] = str(error)[:300]
                step.figures["left"] = stack.leftovers()
                step.figures["left"]["volumes seen"] = stack.remove_volumes_seen()
                step.figures["kept"] = "base, stand-in and project images; dockerd"
        scratch.cleanup()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    wall = time.monotonic() - started
    ok = failed is None and all(s.ok for s in report.steps)
    summary = {
        "ok": ok,
        "wall_seconds": round(wall, 1),
        "steps": [s.__dict__ for s in report.steps],
        "error": None if failed is None else f"{type(failed).__name__}: {failed}",
    }
    REPORT_PATH.parent.mkdir(exist_ok=True)
    REPORT_PATH.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    say("")
    for s in report.steps:
        say(f"{'ok  ' if s.ok else 'FAIL'} {s.seconds:6.1f} s  {s.name}")
    if failed is not None:
        say(f"failed: {type(failed).__name__}: {failed}")
    say(f"compose-test {'passed' if ok else 'FAILED'} in {wall:.0f} s (figures: {REPORT_PATH})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
