"""A 3-node RabbitMQ cluster on this machine, for tests and the cluster chaos run.

Three nodes of the installed ``rabbitmq-server`` with names of their own
(``os-rmq1-<token>@localhost``...: two clusters, of two pytest-xdist workers or two runs,
never share a name), their own AMQP and distribution ports (free ones, from
harness.processes.free_port; ``ORDERSTACK_TEST_CLUSTER_PORT=5673`` fixes them at 5673,
5674, 5675 and 25673...), and their data, logs, configuration and Erlang cookie in a
temporary directory; the second and third join the first as they boot (peer discovery
from a list naming the first). The machine's own node (``rabbit@localhost`` on
5672) is never addressed: every command here names one of our nodes, with our cookie,
which that node does not share.

    with RabbitCluster().start() as cluster:   # always stopped, whatever happens
        cluster.urls                            # amqp://guest:guest@127.0.0.1:<port>/ ...
        cluster.kill(1); cluster.restart(1)     # kill -9 of node 2 and its return
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aio_pika

from harness.processes import free_port

RABBITMQ_BIN = Path(os.environ.get("ORDERSTACK_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
# Fixed ports when set (5673, 5674, 5675 for "5673"); free ones otherwise.
FIXED_BASE_PORT = os.environ.get("ORDERSTACK_TEST_CLUSTER_PORT", "")
DIST_PORT_OFFSET = 20000  # with fixed ports, Erlang distribution's: 25673...
START_TIMEOUT = 120.0


class ClusterError(RuntimeError):
    pass


def node_name(index: int, token: str) -> str:
    """The Erlang node name of a cluster's node ``index`` (0-based)."""
    suffix = f"-{token}" if token else ""
    return f"os-rmq{index + 1}{suffix}@localhost"


@dataclass
class RabbitNode:
    index: int
    base: Path
    port: int
    dist_port: int
    token: str = ""  # the cluster's, in the node's name
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return node_name(self.index, self.token)

    @property
    def directory(self) -> Path:
        return self.base / f"node{self.index + 1}"

    @property
    def pid_file(self) -> Path:
        return self.directory / "rabbit.pid"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def env(self) -> dict[str, str]:
        config = self.directory / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            # A killed node comes back quickly; do not wait long for others at boot.
            "mnesia_table_loading_retry_limit = 3\n"
            "mnesia_table_loading_retry_timeout = 10000\n" + self.seed_config()
        )
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.base),  # our .erlang.cookie, not the machine node's
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(config.with_suffix("")),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.directory / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_START_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def seed_config(self) -> str:
        """The second and third nodes join the first at their first boot (RabbitMQ's
        peer discovery from a list, which names the first alone), where a stop_app,
        join_cluster and start_app took three ``rabbitmqctl`` calls, an Erlang VM each, per
        node. A node that boots again on its data is a member already and skips it."""
        if self.index == 0:
            return ""
        return (
            "cluster_formation.peer_discovery_backend = classic_config\n"
            f"cluster_formation.classic_config.nodes.1 = {node_name(0, self.token)}\n"
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self.env(),
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our signals only, never the caller's group
            )

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        """kill -9 of the node's Erlang VM (and the script that started it)."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.pid_file.unlink(missing_ok=True)

    def alive_or_booting(self) -> bool:
        """The node's VM is up, or its start script has not written the pid file yet."""
        if self.process is not None and self.process.poll() is None:
            return True
        return self.alive()

    def alive(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@dataclass
class RabbitCluster:
    size: int = 3
    base_port: int | None = int(FIXED_BASE_PORT) if FIXED_BASE_PORT else None
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="orderstack-rmq-")))
    nodes: list[RabbitNode] = field(init=False)
    start_seconds: float = 0.0  # how long start() took

    def __post_init__(self) -> None:
        token = secrets.token_hex(3)
        if self.base_port is None:
            ports = [(free_port(), free_port()) for _ in range(self.size)]
        else:
            ports = [
                (self.base_port + i, self.base_port + i + DIST_PORT_OFFSET)
                for i in range(self.size)
            ]
        self.nodes = [
            RabbitNode(i, self.base, amqp, dist, token) for i, (amqp, dist) in enumerate(ports)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """RABBITMQ_URL for a service: every node, comma-separated."""
        return ",".join(self.urls)

    def vhost_urls(self, vhost: str) -> str:
        return ",".join(f"{url}{vhost}" for url in self.urls)

    def ctl(self, node: int, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <node> ...`` with our cookie; raises ClusterError on failure."""
        command = [str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", self.nodes[node].name, *args]
        try:
            done = subprocess.run(
                command,
                env=self.nodes[node].env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{' '.join(command)}: no answer in {timeout}s") from exc
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout}")
        return done.stdout

    def start(self) -> RabbitCluster:
        """Start the nodes and cluster them; on any failure everything started is stopped."""
        started = time.monotonic()
        try:
            (self.base / "enabled_plugins").write_text("[].\n")
            (self.base / "rabbitmq-env.conf").write_text("")
            cookie = self.base / ".erlang.cookie"
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
            # The first node, then the others at once: each joins the first as it boots
            # (RabbitNode.seed_config), which must be running by then.
            self.nodes[0].start()
            self.wait_running(0)
            others = range(1, self.size)
            for i in others:
                self.nodes[i].start()
            self._on_each(others, self.wait_running)
            self.wait_clustered()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    @staticmethod
    def _on_each(nodes: Iterable[int], action: Callable[[int], object]) -> None:
        """``action`` on every node at once (threads); the first failure raised."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            for done in [pool.submit(action, i) for i in nodes]:
                done.result()

    def wait_running(self, node: int, timeout: float = START_TIMEOUT) -> None:
        """Until the node takes an AMQP connection (its listeners open last in its boot):
        one connection attempt every 0.2 s, where ``rabbitmqctl await_startup`` started an
        Erlang VM, about a second of CPU, per call."""
        deadline = time.monotonic() + timeout
        while True:
            error = asyncio.run(_connects(self.nodes[node].url))
            if error is None:
                return
            if time.monotonic() > deadline or not self.nodes[node].alive_or_booting():
                raise ClusterError(
                    f"{self.nodes[node].name} not running after {timeout}s: {error}; "
                    f"see {self.nodes[node].log_path}"
                )
            time.sleep(0.2)

    def wait_clustered(self, timeout: float = 60.0) -> None:
        """Until every node sees all of them running."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.ctl(0, "cluster_status", "--formatter", "json")
            if all(node.name in status.split("running_nodes", 1)[-1] for node in self.nodes):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"cluster not formed after {timeout}s: {status}")
            time.sleep(0.5)

    def kill(self, node: int) -> None:
        """kill -9 of node ``node`` (0-based)."""
        self.nodes[node].kill()

    def restart(self, node: int) -> float:
        """Start a killed node again on its data; it rejoins the cluster. Seconds taken."""
        started = time.monotonic()
        self.nodes[node].start()
        self.wait_running(node)
        return time.monotonic() - started

    def add_vhost(self, vhost: str) -> None:
        self.ctl(0, "add_vhost", vhost)
        self.ctl(0, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def stop(self) -> None:
        """kill -9 of every node, and their data deleted: nothing of theirs is kept, so
        there is nothing for a graceful stop (a ``rabbitmqctl stop`` each, an Erlang VM
        apiece) to save."""
        self._on_each(range(self.size), self.kill)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> RabbitCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _connects(url: str) -> str | None:
    """None when an AMQP connection to ``url`` opens (closed at once), else why not."""
    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception as exc:  # refused, reset, the broker still booting: asked again
        return repr(exc)
    await connection.close()
    return None
