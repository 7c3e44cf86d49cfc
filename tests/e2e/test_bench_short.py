"""The benchmark harness, run briefly so it cannot rot (`make bench` is the real run).
It checks that the harness measures and that every order settles, never a timing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from orderstack.harness.bench import BenchConfig, render, run_bench, write_results

pytestmark = pytest.mark.e2e


def test_short_bench_measures_every_step_and_every_order_settles(tmp_path: Path) -> None:
    config = BenchConfig(
        rates=(40,),
        step_seconds=2,
        generators=1,
        products=2,
        saturation_seconds=1,
        out_dir=tmp_path,
    )
    results = asyncio.run(run_bench(config))
    print(render(results))
    (step,) = results["steps"]
    assert step["sent"] == 80 and step["accepted"] == 80 and step["errors"] == {}
    assert step["stored"] == 80  # every order stored in the step settled
    assert set(step["accept_ms"]) == {"p50", "p95", "p99", "max"}
    assert set(step["settle_ms"]) == {"p50", "p99", "max"}
    assert step["settled_per_second"] > 0
    assert {"product-0", "order-0", "load-generators"} <= set(step["cpu_percent"])
    assert set(step["memory_mb"]) == {"product-0", "order-0"}
    assert all(mb > 0 for mb in step["memory_mb"].values())
    assert results["product_get"]["cached_get_per_second"] > 0
    assert results["product_get"]["bare_endpoint_per_second"] > 0
    assert results["violations"] == []
    data, picture = write_results(results, tmp_path)
    assert json.loads(data.read_text())["steps"][0]["accepted"] == 80
    assert picture.read_bytes().startswith(b"\x89PNG")
