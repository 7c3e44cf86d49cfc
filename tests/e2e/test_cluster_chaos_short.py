"""The cluster chaos run, short: a 3-node RabbitMQ cluster with quorum queues, replicas of
both services behind HAProxy, a broker node killed (kill -9) and brought back under load
among replica kills and malformed messages, while clients cancel some orders; every
invariant holds and the figures around
the node loss are measured. Bounded under 120 s (35 s alone on two cores; it runs beside
the other tests of make test's parallel part); `make chaos ARGS="--cluster"` is the long
one."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from harness.checks import CACHE, CANCELS, DEAD_LETTERS, LEDGER, NO_OVERSELL, SETTLED
from harness.cluster import RABBITMQ_BIN
from harness.cluster_chaos import ClusterChaosConfig, run_cluster_chaos
from tests.conftest import servers_unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_invariants_hold_through_a_broker_node_loss_behind_the_balancer(
    tmp_path: Path,
) -> None:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists() or shutil.which("haproxy") is None:
        servers_unavailable(
            "needs the rabbitmq-server and haproxy packages (.ci/run installs haproxy)"
        )
    config = ClusterChaosConfig(
        product_replicas=2,
        order_replicas=2,
        duration=15,
        rate=40,
        products=3,
        stock_ratio=0.5,
        fault_interval=1.0,
        faults=("node", "kill", "malformed"),
        node_kills=1,
        node_down_seconds=2.0,
        settle_timeout=30,
        log_dir=tmp_path,
    )
    started = time.monotonic()
    report = asyncio.run(run_cluster_chaos(config))
    print(report.render())
    assert report.violations == []
    assert {SETTLED, NO_OVERSELL, LEDGER, DEAD_LETTERS, CACHE, CANCELS} <= set(report.checks)
    assert report.base.faults["node"] >= 1 and report.base.faults["kill"] >= 1
    assert report.base.malformed_injected > 0
    assert report.losses_under_load >= 1 and report.phases["during"].seconds > 0
    assert report.base.accepted > 0 and report.base.confirmed > 0 and report.base.failed > 0
    assert report.base.cancels.orders > 0 and report.base.cancelled > 0  # cancels through it
    assert time.monotonic() - started < 120
