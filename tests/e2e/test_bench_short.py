"""The benchmark harness, run briefly so it cannot rot (`make bench` is the real run).
It checks that the harness measures and that every order settles, never a timing."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import bench, cost
from harness.bench import BenchConfig, judge_targets, main, render, run_bench, write_results
from harness.http_ladder import parse_wrk
from harness.sandbox import Sandbox
from harness.stack import Stack

pytestmark = pytest.mark.e2e

TARGET_ROWS = 5  # the issue "speed"'s targets, one row each


def assert_targets_agree(results: dict[str, Any], printed: str) -> None:
    """A row per target, printed as in the JSON, each verdict what its figures say."""
    targets = results["targets"]
    assert len(targets) == TARGET_ROWS
    for row in targets:
        line = f"| {row['what']} | {row['target']} | {row['measured']} | {row['verdict']} |"
        assert line in printed
        if row["verdict"].startswith("not measured"):
            assert row["figures"] == {} and row["measured"] == "-"
    settled, cpu, get, post, reruns = targets
    if settled["figures"]:
        f = settled["figures"]
        held = (
            f["settled_per_second"] >= bench.SETTLED_PER_SECOND
            and f["accept_p99_ms"] is not None
            and f["accept_p99_ms"] <= bench.ACCEPT_P99_MS
            and f["settle_p99_ms"] is not None
            and f["settle_p99_ms"] <= bench.SETTLE_P99_MS
            and f["errors"] == 0
        )
        assert settled["verdict"] == ("PASS" if held else "FAIL")
    if cpu["figures"]:
        f = cpu["figures"]
        assert f["cpu_ms_per_order_all"] == pytest.approx(sum(f["by_process"].values()), abs=0.01)
        held = f["cpu_ms_per_order_all"] <= bench.CPU_MS_PER_ORDER
        assert cpu["verdict"] == ("PASS" if held else "FAIL")
    if get["figures"]:
        f = get["figures"]
        assert f["ratio"] == pytest.approx(f["cached_per_second"] / f["bare_per_second"], abs=1e-3)
        held = (
            f["ratio"] >= bench.GET_OVER_BARE
            and f["cached_p99_ms"] < f["bare_p99_ms"]
            and f["errors"] == 0
        )
        assert get["verdict"] == ("PASS" if held else "FAIL")
    if post["figures"]:
        f = post["figures"]
        held = (
            f["per_second"] >= bench.POST_PER_SECOND
            and f["p99_ms"] <= bench.POST_P99_MS
            and f["errors"] == 0
        )
        assert post["verdict"] == ("PASS" if held else "FAIL")
    if reruns["figures"]:
        held = all(
            pct <= bench.RERUN_TOLERANCE_PERCENT
            for pct in reruns["figures"]["max_from_median"].values()
        )
        assert reruns["verdict"] == ("PASS" if held else "FAIL")


@pytest.mark.slow
def test_short_bench_measures_every_step_and_every_order_settles(tmp_path: Path) -> None:
    config = BenchConfig(
        rates=(40,),
        step_seconds=2,
        generators=1,
        products=2,
        ladder_seconds=1,
        ladder_rounds=2,  # the best of two rounds kept: still a choice among rounds
        bare_seconds=1,
        out_dir=tmp_path,
    )
    results = asyncio.run(run_bench(config))
    printed = render(results)
    print(printed)
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
    # CPU per settled order over every process, and each one's share of it.
    by_process = step["cpu_ms_per_order_by_process"]
    assert {"product-0", "order-0", "load-generators"} <= set(by_process)
    assert set(by_process) == set(step["cpu_percent"])
    assert step["cpu_ms_per_order_all"] > 0
    assert step["cpu_ms_per_order_all"] == pytest.approx(sum(by_process.values()), abs=0.01)
    assert step["cpu_ms_per_order_all"] >= step["cpu_ms_per_order"] > 0
    assert f"cpu per settled order: all processes {step['cpu_ms_per_order_all']:g} ms (" in (
        printed
    )
    # The cost in bare GETs: the yardstick measured in this run, the system's processes
    # counted (not the generators), shares summing to 100 %, a batch size at every stage.
    bare = results["bare_get"]
    assert bare["requests"] > 0 and bare["us_per_request"] > 0
    assert bare["per_core_per_second"] == pytest.approx(1e6 / bare["us_per_request"], rel=0.01)
    spent = step["cost"]
    assert spent["settled"] == 80 and spent["ms_per_order"] > 0
    assert set(spent["ms_by_process"]) == set(by_process) - {"load-generators"}
    assert spent["ms_per_order"] == pytest.approx(sum(spent["ms_by_process"].values()), abs=0.01)
    assert spent["ms_per_order"] == pytest.approx(
        step["cpu_ms_per_order_all"] - by_process["load-generators"], abs=0.01
    )
    assert spent["bare_gets"] == pytest.approx(
        1000 * spent["ms_per_order"] / bare["us_per_request"], rel=0.01
    )
    assert sum(spent["share_percent"].values()) == pytest.approx(100, abs=0.5)
    assert {"order", "product", "mariadb", "rabbitmq", "redis"} == set(spent["share_percent"])
    assert spent["generators_ms_per_order"] == by_process["load-generators"]
    batches = spent["batch_mean"]
    assert set(batches["order-0"]) == {"intake", "relay", "consumer"}
    assert set(batches["product-0"]) == {"relay", "consumer"}
    for stages in batches.values():
        assert all(mean is not None and 1 <= mean <= 200 for mean in stages.values())
    shared = sum(1 / mean for stages in batches.values() for mean in stages.values())
    assert spent["batches_per_order"] == pytest.approx(shared, abs=0.001)
    assert 0 < spent["batches_per_order"] <= 5  # five stages, each at most one batch per order
    low, near = results["headline"]["low"], results["headline"]["near_capacity"]
    assert low["offered_rate"] == near["offered_rate"] == 40  # one step: both
    assert near["bare_gets"] == spent["bare_gets"]
    assert f"headline, near capacity: {near['bare_gets']:g} bare GETs" in printed
    assert f"{bare['us_per_request']:g} us of CPU" in printed
    # The HTTP ladder: requests/s, latencies and the server's CPU of each request, measured.
    ladder = results["http_ladder"]
    assert ladder["rounds"] == 2 and ladder["seconds"] == 1
    for name in ("cached", "bare", "post"):
        run = ladder["results"][name]
        assert run["requests_per_second"] > 0 and len(run["rounds_per_second"]) == 2
        assert run["requests_per_second"] == max(run["rounds_per_second"])
        assert 0 < run["p50_ms"] <= run["p99_ms"]
        assert run["server_cpu_percent"] is not None and run["server_cpu_percent"] > 0
        assert run["errors"] == 0  # the POST body is valid, the product exists
    ratio = (
        ladder["results"]["cached"]["requests_per_second"]
        / (ladder["results"]["bare"]["requests_per_second"])
    )
    assert ladder["get_ratio"] == pytest.approx(ratio, abs=1e-3)
    assert ladder["body_bytes"]["cached"] == ladder["body_bytes"]["bare"]
    assert f"GET ratio, cached over bare: {ladder['get_ratio']}" in printed
    # The targets: the ladder's two measured, the order steps' not (no 2,000 or 1,000/s
    # step), nor the reruns (one run).
    assert_targets_agree(results, printed)
    verdicts = [row["verdict"] for row in results["targets"]]
    assert verdicts[0] == "not measured (no 2000/s step)"
    assert verdicts[1] == "not measured (no 1000/s step)"
    assert verdicts[2] in ("PASS", "FAIL") and verdicts[3] in ("PASS", "FAIL")
    assert verdicts[4] == "not measured (1 run(s); --repeat 3)"
    data, picture = write_results(results, tmp_path)
    assert json.loads(data.read_text())["steps"][0]["accepted"] == 80
    assert picture.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
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


def test_targets_judge_the_worst_run_and_the_spread(tmp_path: Path) -> None:
    """The targets' verdicts on made-up figures, either side of each threshold."""

    def step(rate: float, settled: float, accept_p99: float, cpu: float) -> dict[str, Any]:
        return {
            "offered_rate": rate,
            "settled_per_second": settled,
            "accept_ms": {"p50": 1.0, "p99": accept_p99},
            "settle_ms": {"p50": 10.0, "p99": 100.0},
            "errors": {},
            "cpu_ms_per_order_all": cpu,
            "cpu_ms_per_order_by_process": {"order-0": cpu / 2, "mariadb": cpu / 2},
        }

    def run(settled: float, cpu: float) -> list[dict[str, Any]]:
        return [step(1000, 1000, 20.0, cpu), step(2000, settled, 40.0, 0.9)]

    good = [run(1990, 0.9), run(1985, 0.92), run(2000, 0.95)]
    results: dict[str, Any] = {
        "config": {"step_seconds": "60.0"},
        "steps": good[0],
        "runs": good,
        "spread": bench.spread(good),
        "http_ladder": {
            "get_ratio": 1.25,
            "results": {
                "cached": {"requests_per_second": 5000.0, "p99_ms": 20.0, "errors": 0},
                "bare": {"requests_per_second": 4000.0, "p99_ms": 25.0, "errors": 0},
                "post": {"requests_per_second": 2600.0, "p99_ms": 50.0, "errors": 0},
            },
        },
    }
    targets = judge_targets(results)
    assert [row["verdict"] for row in targets] == ["PASS"] * TARGET_ROWS
    assert_targets_agree({**results, "targets": targets}, "\n".join(bench.render_targets(targets)))

    worse = copy.deepcopy(results)
    worse["runs"][2] = run(1900, 1.4)  # one run slower: it is the one judged, and the spread
    worse["spread"] = bench.spread(worse["runs"])
    worse["http_ladder"]["results"]["post"]["errors"] = 3
    worse["http_ladder"]["results"]["cached"]["p99_ms"] = 30.0
    targets = judge_targets(worse)
    assert [row["verdict"] for row in targets] == ["FAIL"] * TARGET_ROWS
    assert targets[0]["figures"]["settled_per_second"] == 1900
    assert targets[1]["figures"]["cpu_ms_per_order_all"] == 1.4
    assert_targets_agree({**worse, "targets": targets}, "\n".join(bench.render_targets(targets)))
    spread_1000 = worse["spread"]["1000"]["cpu_ms_per_order_all"]
    assert (spread_1000["min"], spread_1000["max"], spread_1000["median"]) == (0.9, 1.4, 0.92)
    assert spread_1000["spread_percent"] == pytest.approx(100 * 0.5 / 0.92, abs=0.1)
    assert not spread_1000["within_tolerance"]


def test_cost_of_an_order_from_made_up_figures() -> None:
    """The cost's arithmetic: the system's CPU over the orders settled, in ms and in bare
    GETs, the generators apart; shares by kind of process; mean batch sizes from two
    scrapes; the low rate from the yardstick; the headline's two steps."""
    bare = {"us_per_request": 200.0, "per_core_per_second": 5000.0}
    assert bench.resolve_rates((cost.LOW, 900, 310), bare) == [310.0, 900.0]
    with pytest.raises(ValueError, match="bare GET"):
        bench.resolve_rates((cost.LOW,), None)

    def scrape(intake: tuple[int, int], relay: tuple[int, int]) -> str:
        return "\n".join(
            [
                "# TYPE batch_size histogram",
                f'batch_size_sum{{stage="intake"}} {intake[0]}',
                f'batch_size_count{{stage="intake"}} {intake[1]}',
                f'batch_size_sum{{stage="relay"}} {relay[0]}',
                f'batch_size_count{{stage="relay"}} {relay[1]}',
                "",
            ]
        )

    means = cost.mean_batches(
        {"order-0": scrape((10, 10), (5, 5))}, {"order-0": scrape((1010, 110), (5, 5))}
    )
    assert means == {"order-0": {"intake": 10.0, "relay": None}}
    assert cost.batches_per_order(means) == 0.1
    assert cost.batches_per_order({"order-0": {"relay": None}}) is None
    spent = {
        "order-0": 2.0,
        "order-1": 0.5,
        "product-0": 1.5,
        "mariadb": 0.6,
        "rabbitmq": 0.3,
        "redis": 0.1,
        "load-generators": 4.0,
    }
    found = cost.step_cost(spent, 1000, 200.0, means)
    assert found["ms_per_order"] == 5.0 and found["bare_gets"] == 25.0
    assert found["generators_ms_per_order"] == 4.0
    assert found["share_percent"] == {
        "order": 50.0,
        "product": 30.0,
        "mariadb": 12.0,
        "rabbitmq": 6.0,
        "redis": 2.0,
    }
    assert cost.step_cost(spent, 1000, None, {})["bare_gets"] is None

    def step(rate: float, settled: float, gets: float) -> dict[str, Any]:
        figures = {"bare_gets": gets, "ms_per_order": gets / 5, "share_percent": {}}
        return {"offered_rate": rate, "settled_per_second": settled, "cost": figures}

    steps = [step(310, 309, 25), step(900, 880, 12), step(2000, 1200, 11)]
    head = cost.headline(steps, 310)
    assert head["low"]["bare_gets"] == 25  # the low step
    assert head["near_capacity"]["offered_rate"] == 900  # the highest that kept up
    assert cost.headline([steps[2]], None)["near_capacity"]["kept_up"] is False


def test_wrk_report_is_read_whatever_its_units() -> None:
    report = """Running 1s test @ http://127.0.0.1:1/
  2 threads and 64 connections
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    1.90ms
     99%    1.05s
  5752 requests in 1.00s, 1.46MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   5735.90
Transfer/sec:      1.46MB
"""
    found = parse_wrk(report)
    assert found == {
        "requests": 5752,
        "requests_per_second": 5735.9,
        "p50_ms": 0.812,
        "p99_ms": 1050.0,
        "non_2xx": 7,
        "socket_errors": {"connect": 0, "read": 2, "write": 0, "timeout": 1},
    }


@pytest.mark.slow
def test_short_repeat_reports_the_spread_per_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--rates", "20", "--step-seconds", "1", "--generators", "1", "--repeat", "2"]
    argv += ["--bare-seconds", "0"]  # no yardstick: costs in ms only
    code = main([*argv, "--ladder-seconds", "0", "--out", str(tmp_path)])

    printed = capsys.readouterr().out
    (data,) = tmp_path.glob("bench-*.json")
    results = json.loads(data.read_text())
    assert code == 0 and results["violations"] == [] and "http_ladder" not in results
    assert len(results["runs"]) == 2 and results["steps"] == results["runs"][0]
    assert all(s["stored"] == 20 for run in results["runs"] for s in run)
    figures = results["spread"]["20"]
    assert set(figures) == {"settled_per_second", "accept_p99_ms", "cpu_ms_per_order_all"}
    for key, figure in figures.items():
        values = [
            s[key] if key != "accept_p99_ms" else s["accept_ms"]["p99"]
            for (s,) in (results["runs"])
        ]
        assert figure["values"] == values
        assert figure["min"] == min(values) and figure["max"] == max(values)
        within = figure["max_from_median_percent"] <= bench.RERUN_TOLERANCE_PERCENT
        assert figure["within_tolerance"] == within
    assert "reruns: 2 runs of the step ladder" in printed
    assert_targets_agree(results, printed)
    verdicts = [row["verdict"] for row in results["targets"]]
    assert verdicts[2:4] == ["not measured (no HTTP ladder: --ladder-seconds 0)"] * 2
    assert verdicts[4] == "not measured (2 run(s); --repeat 3)"  # judged: the test above


@pytest.mark.slow
def test_short_lines_compares_orders_of_three_lines_with_one_line_at_one_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--lines 1,3: at the same offered rate a step of one-line orders, then one of 3-line
    orders (items of 3 products, the exact catalog total) in the same sitting; every order
    of both is accepted and settles, the invariants per line hold, and the side-by-side
    table shows each step's figures."""
    argv = ["--rates", "20", "--step-seconds", "1", "--generators", "1", "--lines", "1,3"]
    argv += ["--bare-seconds", "1", "--bare-rate", "2000"]
    code = main([*argv, "--ladder-seconds", "0", "--out", str(tmp_path)])

    printed = capsys.readouterr().out
    (data,) = tmp_path.glob("bench-*.json")
    results = json.loads(data.read_text())
    assert code == 0 and results["violations"] == []
    one, three = results["steps"]
    assert (one["offered_rate"], one["lines"]) == (20, 1)
    assert (three["offered_rate"], three["lines"]) == (20, 3)
    for step in (one, three):
        assert step["sent"] == step["accepted"] == step["stored"] == 20 and step["errors"] == {}
        assert step["accept_ms"]["p99"] > 0 and step["settled_per_second"] > 0
    assert "lines per order at the same offered rate" in printed
    for step in (one, three):
        row = (
            f"  {20:>6g} {step['lines']:>5} {step['accept_ms']['p50']:>10} "
            f"{step['accept_ms']['p99']:>8}"
        )
        assert row in printed
    # The targets and the spread are of one-line orders: the 3-line step is not judged.
    assert_targets_agree(results, printed)


@pytest.mark.slow
def test_short_compare_seed_puts_another_product_service_beside_this_one(
    tmp_path: Path,
    make_sandbox: Callable[..., Sandbox],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--compare-seed against a product service this test starts (standing in for the
    seed's), with the aiohttp client (the fallback when wrk is missing)."""
    other = Stack(make_sandbox("bench-other"), tmp_path / "logs", order_replicas=0).start()
    try:
        argv = ["--compare-seed", other.product_url, "--ladder-seconds", "1"]
        argv += ["--ladder-rounds", "1", "--ladder-tool", "aiohttp", "--out", str(tmp_path)]
        code = main(argv)
    finally:
        other.stop()

    printed = capsys.readouterr().out
    (data,) = tmp_path.glob("compare-*.json")
    compared = json.loads(data.read_text())["compare"]
    assert (
        code == 0 and compared["tool"] == "aiohttp" and compared["other_url"] == (other.product_url)
    )
    found = compared["results"]
    for name in ("other-get", "this-get", "bare", "other-post", "this-post"):
        assert found[name]["requests_per_second"] > 0 and found[name]["errors"] == 0
        assert found[name]["server_cpu_percent"] is not None  # each server found on its port
    assert found["other-get"]["request"].startswith(f"GET {other.product_url}/products/")
    assert f"| request | {other.product_url} | this project | bare FastAPI |" in printed
    get_row = next(line for line in printed.splitlines() if line.startswith("| GET /products/"))
    post_row = next(line for line in printed.splitlines() if line.startswith("| POST /products"))
    for name in ("other-get", "this-get", "bare"):
        assert f"{found[name]['requests_per_second']:,.0f}/s" in get_row
    for name in ("other-post", "this-post"):
        assert f"{found[name]['requests_per_second']:,.0f}/s" in post_row
    assert "steps" not in json.loads(data.read_text())
