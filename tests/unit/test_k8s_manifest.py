"""deploy/k8s/orderstack.yaml, the example Kubernetes manifest (no cluster here has run
it): held to the code it deploys. Each setting it gives is one the services read, each
probe is a route both services answer as the manifest expects, each pod's grace period
outlasts its preStop sleep plus the process's own shutdown bound under the manifest's
settings, and the Services and PodDisruptionBudgets select the Deployments' pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orderstack.config import Settings, load_settings
from tests.unit.embedded_apps import running_apps

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "orderstack.yaml"
SERVICES = {"order-service": ("order", 8080), "product-service": ("product", 3000)}


@pytest.fixture(scope="module")
def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]


def of_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def test_each_service_is_a_deployment_serving_its_port(documents: list[dict[str, Any]]) -> None:
    deployments = of_kind(documents, "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, (service, port) in SERVICES.items():
        spec = container(deployments[name])
        env = {e["name"]: e["value"] for e in spec["env"]}
        assert spec["args"] == ["serve", service]
        assert [p["containerPort"] for p in spec["ports"]] == [port]
        assert env["PORT"] == str(port)
        assert deployments[name]["spec"]["replicas"] >= 2


def test_every_setting_given_is_one_the_services_read(documents: list[dict[str, Any]]) -> None:
    settings = set(Settings.model_fields)
    [config] = of_kind(documents, "ConfigMap").values()
    given = set(config["data"])
    for deployment in of_kind(documents, "Deployment").values():
        given |= {e["name"] for e in container(deployment)["env"]}

    assert given - settings == set()
    load_settings(**config["data"])  # each value parses


def test_grace_outlasts_the_pre_stop_sleep_and_the_shutdown_bound(
    documents: list[dict[str, Any]],
) -> None:
    [config] = of_kind(documents, "ConfigMap").values()
    bound = load_settings(**config["data"]).shutdown_bound_seconds
    for deployment in of_kind(documents, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        pre_stop = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]

        assert pre_stop >= 1
        assert pod["terminationGracePeriodSeconds"] > pre_stop + bound


def test_services_and_disruption_budgets_select_the_pods(documents: list[dict[str, Any]]) -> None:
    deployments = of_kind(documents, "Deployment")
    services = of_kind(documents, "Service")
    budgets = of_kind(documents, "PodDisruptionBudget")
    assert set(services) == set(budgets) == set(deployments)
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert services[name]["spec"]["selector"].items() <= labels.items()
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert budgets[name]["spec"]["maxUnavailable"] == 1
        [port] = services[name]["spec"]["ports"]
        assert port["port"] == SERVICES[name][1] and port["targetPort"] == "http"


async def test_the_probes_are_routes_both_services_answer(
    documents: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Liveness and start-up on /livez (no dependency), readiness on /readyz: asked of
    both services (embedded, started), each answers 200."""
    probes: set[tuple[str, str]] = set()
    for deployment in of_kind(documents, "Deployment").values():
        spec = container(deployment)
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert spec[kind]["httpGet"]["port"] == "http"
            probes.add((kind, spec[kind]["httpGet"]["path"]))
    assert probes == {
        ("startupProbe", "/livez"),
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
    }
    async with running_apps(tmp_path) as apps:
        for http in (apps.order_http, apps.product_http):
            for _, path in probes:
                assert (await http.get(path)).status_code == 200, path
