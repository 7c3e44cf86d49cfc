"""The seed scenario's verdicts (`make bench-seed`): each of the seed load test's thresholds
passes or fails on its own, and the overall verdict fails when any one does."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from harness.bench import BenchConfig, Step, render, seed_checks, seed_passed
from harness.load import NO_ID


def step(p95: float | None = 120.0, errors: dict[str, int] | None = None) -> Step:
    errors = errors or {}
    sent = 1000
    accepted = sent - sum(errors.values())
    return Step(
        offered_rate=1000,
        sent=sent,
        accepted=accepted,
        stored=accepted,
        errors=errors,
        accept_ms={} if p95 is None else {"p50": 10.0, "p95": p95, "p99": p95, "max": p95},
    )


def verdicts(s: Step) -> dict[str, bool]:
    return {c["check"]: c["passed"] for c in seed_checks(s)}


def test_a_healthy_step_passes_every_threshold() -> None:
    assert verdicts(step()) == {
        "p95 < 500 ms": True,
        "failed < 10 %": True,
        "id in every 201": True,
    }


@pytest.mark.parametrize(
    ("s", "failing"),
    [
        pytest.param(step(p95=500.0), "p95 < 500 ms", id="p95 at the limit"),
        pytest.param(step(p95=None, errors={"503": 1000}), "p95 < 500 ms", id="no 201 at all"),
        pytest.param(step(errors={"503": 60, "TimeoutError": 40}), "failed < 10 %", id="10 %"),
        pytest.param(step(errors={NO_ID: 1}), "id in every 201", id="one 201 without id"),
    ],
)
def test_each_threshold_fails_on_its_own(s: Step, failing: str) -> None:
    assert verdicts(s)[failing] is False


def test_failed_counts_every_request_without_a_2xx_but_not_a_201_missing_its_id() -> None:
    (_, failed, _) = seed_checks(step(errors={"503": 99, "ClientOSError": 0, NO_ID: 5}))

    assert failed["passed"] and failed["measured"] == "9.90 % (99 of 1000)"


def test_overall_verdict_and_report_name_the_failed_threshold() -> None:
    slow = step(p95=9513.0)
    slow.checks = seed_checks(slow)
    results = {
        "steps": [asdict(slow)],
        "memory_mb_after": {},
        "violations": [],
    }

    report = render(results)

    assert not seed_passed(results)
    assert "p95 < 500 ms     9513.0 ms" in report and "FAIL" in report
    assert report.endswith("seed scenario: FAIL")


def test_seed_scenario_defaults_are_the_seed_load_test() -> None:
    config = BenchConfig.seed()

    assert (config.rates, config.step_seconds, config.products) == ((1000,), 30, 2)
    assert config.seed_scenario and config.ladder_seconds == 0
    assert BenchConfig.seed(rates=(50,), step_seconds=2).rates == (50,)
