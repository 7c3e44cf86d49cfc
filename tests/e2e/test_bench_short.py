"""The benchmark harness, run briefly so it cannot rot (`make bench` is the real run).
It checks that the harness measures and that every order settles, never a timing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from harness.bench import BenchConfig, main, render, run_bench, write_results

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


def test_short_seed_scenario_posts_camel_case_and_judges_each_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--seed-scenario", "--rates", "20", "--step-seconds", "2", "--generators", "1"]
    code = main([*argv, "--out", str(tmp_path)])

    printed = capsys.readouterr().out
    (data,) = tmp_path.glob("bench-*.json")
    results = json.loads(data.read_text())
    (step,) = results["steps"]
    # camelCase bodies only: every one accepted (a refused spelling would be 40 400s).
    assert step["sent"] == 40 and step["accepted"] == 40 and step["errors"] == {}
    assert step["stored"] == 40 and results["violations"] == []
    assert results["config"]["products"] == "2" and "product_get" not in results
    checks = {c["check"]: c for c in step["checks"]}
    assert set(checks) == {"p95 < 500 ms", "failed < 10 %", "id in every 201"}
    assert checks["failed < 10 %"]["passed"] and checks["id in every 201"]["passed"]
    assert checks["id in every 201"]["measured"] == "0 of 40 without id"
    # Whatever the shared machine made of the latency, verdicts and exit code agree.
    overall = all(c["passed"] for c in checks.values())
    assert code == (0 if overall else 1)
    for name, check in checks.items():
        assert f"{name:<16} {check['measured']:<32} {'PASS' if check['passed'] else 'FAIL'}" in (
            printed
        )
    assert f"seed scenario: {'PASS' if overall else 'FAIL'}" in printed
    assert f"python -m harness.bench {' '.join(argv)} --out {tmp_path}" in printed
