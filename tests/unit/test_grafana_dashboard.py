"""deploy/grafana/dashboards/orderstack.json, the dashboard docker-compose.yml provisions:
every query parses as PromQL in Prometheus' own promtool (each written as a recording rule,
then ``promtool check rules``; without promtool these are skipped, and fail under
``CI=true``), every metric it names is one the services show on /metrics (a renamed metric
would leave a panel empty for ever), and it reads the data source compose provisions.
``make compose-test`` runs the same queries on the compose stack's Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import required_program
from tests.unit.embedded_apps import one_order_settled, running_apps, sample_names

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "orderstack.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
# Grafana's own variables, as Grafana fills them in before sending a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Series Prometheus makes itself, not the services.
SCRAPE_SERIES = {"up"}
# Words of PromQL that are not metric names (functions are told apart by their "(").
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS |= {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def panels(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found = []
    for panel in node.get("panels", []):
        found.append(panel)
        found.extend(panels(panel))
    return found


def queries() -> list[tuple[str, str]]:
    """(panel title and refId, expr as Grafana sends it) of every target."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((f"{panel['title']} {target['refId']}", expr))
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals (label values)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group(0).lower() in KEYWORDS:
            continue
        names.add(match.group(0))
    return names


@pytest.fixture(scope="module")
def promtool() -> str:
    return required_program("promtool", "prometheus")


def check_rules(promtool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_dashboard_has_the_golden_signals_and_the_pipeline() -> None:
    titles = " ".join(title for title, _ in queries()).lower()

    assert len(queries()) >= 10
    for word in ("traffic", "errors", "latency", "saturation", "orders", "settle", "outbox"):
        assert word in titles, word
    for _, expr in queries():
        assert "$" not in expr, f"a variable Grafana would not fill in: {expr}"


def test_every_query_parses_in_prometheus(promtool: str, tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")

    result = check_rules(promtool, path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries())} rules found" in result.stdout


def test_a_query_that_does_not_parse_is_refused(promtool: str, tmp_path: Path) -> None:
    """The check above can fail: promtool refuses a broken expression."""
    path = tmp_path / "broken.yml"
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "b", "rules": [{"record": "b:x", "expr": "sum(rate(x[1m])"}]}]}
        ),
        encoding="utf-8",
    )

    result = check_rules(promtool, path)

    assert result.returncode != 0


def test_metric_names_are_read_out_of_an_expression() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{job="x",le="1.0"}[5m])))'
        " / on (job) group_left b or up"
    )

    assert metric_names(expr) == {"a_bucket", "b", "up"}


async def test_every_metric_the_dashboard_names_is_one_the_services_show(tmp_path: Path) -> None:
    """Both embedded services scraped after an order settled (a histogram's _bucket and
    _count too)."""
    named = {name for _, expr in queries() for name in metric_names(expr)}
    shown: set[str] = set()
    async with running_apps(tmp_path) as apps:
        await one_order_settled(apps)
        for http in (apps.order_http, apps.product_http):
            shown |= await sample_names(http)

    assert named - SCRAPE_SERIES, "no metric found in the queries"
    assert named - SCRAPE_SERIES <= shown, named - SCRAPE_SERIES - shown


def test_the_dashboard_reads_the_provisioned_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    sources = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    uids = {source["uid"] for source in sources if source["type"] == "prometheus"}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = [str(m) for m in compose["services"]["grafana"]["volumes"]]

    for panel in panels(dashboard):
        if "targets" in panel:
            assert panel["datasource"]["uid"] in uids, panel["title"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    assert "./deploy/grafana/dashboards:/etc/grafana/dashboards:ro" in mounts
    assert "http://prometheus:9090" in {source["url"] for source in sources}
