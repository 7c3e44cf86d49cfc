"""deploy/alerts.yml, checked and unit-tested by Prometheus' own promtool (Debian's
``prometheus`` package; ``.ci/run`` installs it when missing; without it these tests are
skipped, and fail under ``CI=true``): the rules parse and lint clean, every alert fires in
deploy/alerts_test.yml where it should, deploy/prometheus.yml loads them, and every series
the tests feed the rules is one the services really show on /metrics (a renamed metric
would leave an alert that can never fire)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import required_program
from tests.unit.embedded_apps import one_order_settled, running_apps, sample_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS, ALERT_TESTS, PROMETHEUS = (
    DEPLOY / "alerts.yml",
    DEPLOY / "alerts_test.yml",
    DEPLOY / "prometheus.yml",
)
# Series Prometheus makes itself, not the services.
SCRAPE_SERIES = {"up"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return required_program("promtool", "prometheus")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_the_rules_are_valid_and_lint_clean(promtool: str) -> None:
    result = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(ALERTS))

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_unit_tests(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(ALERT_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_loads_the_alerts(promtool: str) -> None:
    result = run(promtool, "check", "config", str(PROMETHEUS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_every_alert_is_seen_firing_in_a_unit_test() -> None:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    fired = {
        (case["alertname"], alert["exp_labels"].get("long_window"))
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        for alert in case["exp_alerts"]
    }
    windows = {
        (r["alert"], r.get("labels", {}).get("long_window"))
        for group in rules["groups"]
        for r in group["rules"]
        if "alert" in r
    }

    assert len(alerts) == 9
    assert windows <= fired


async def test_the_tests_series_are_what_the_services_show(tmp_path: Path) -> None:
    """Both embedded services scraped after an order settled: each metric name in the
    tests' input series is on one of them (a histogram's _bucket and _count too)."""
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    fed = {
        series["series"].split("{", 1)[0]
        for test in tests["tests"]
        for series in test["input_series"]
    }
    shown: set[str] = set()
    async with running_apps(tmp_path) as apps:
        await one_order_settled(apps)
        for http in (apps.order_http, apps.product_http):
            shown |= await sample_names(http)
            scraped = (await http.get("/metrics")).text
            sources = {
                sample.labels.get("source")
                for family in text_string_to_metric_families(scraped)
                for sample in family.samples
                if sample.name == "metrics_source_up"
            }
            assert {"readiness", "dead_letters"} <= sources  # what ReplicaNotReady & co. read

    assert fed - SCRAPE_SERIES <= shown, fed - SCRAPE_SERIES - shown
