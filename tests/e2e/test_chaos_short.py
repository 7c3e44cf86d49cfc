"""A short, bounded fault-injection run (the long one is `make chaos`): every fault kind
once, then every invariant of SPEC.md checked from the databases and the broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orderstack.harness.chaos import FAULTS, ChaosConfig, run_chaos

pytestmark = pytest.mark.e2e


def test_invariants_hold_through_kills_and_outages(tmp_path: Path) -> None:
    config = ChaosConfig(
        product_replicas=2,
        order_replicas=2,
        orders=500,
        rate=100,
        products=3,
        stock_ratio=0.2,
        fault_interval=0.8,
        outage_seconds=2.0,
        settle_timeout=60,
        log_dir=tmp_path,
    )
    report = asyncio.run(run_chaos(config))
    print(report.render())
    assert report.violations == []
    assert set(report.faults) == set(FAULTS)  # every kind of fault was really injected
    assert report.accepted > 0 and report.confirmed > 0 and report.failed > 0
    assert report.confirmed + report.failed >= report.accepted
