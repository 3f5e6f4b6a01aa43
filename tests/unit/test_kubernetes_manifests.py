"""examples/kubernetes: every manifest parses and agrees with the settings and metrics."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lambda_rapid.daemon import RUNTIME_STOP_GRACE
from lambda_rapid.metrics import DaemonMetrics, ServerMetrics
from lambda_rapid.settings import ALL_DAEMON_SETTINGS, SERVER_SETTINGS, SHUTDOWN_GRACE

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "kubernetes"
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))
SETTINGS = {s.env: s for s in (*ALL_DAEMON_SETTINGS, *SERVER_SETTINGS)}
# Read by the single executable before any setting (see README), not a table row.
OTHER_VARIABLES = {"KUBERNETES_INIT_CONTAINER"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DAEMON_IMAGES = {"echo-python", "echo-scratch", "lambda-server"}


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in MANIFESTS:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def pod_specs() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) for every Pod, Deployment and StatefulSet."""
    for doc in documents():
        if doc["kind"] == "Pod":
            yield doc, doc
        elif doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc, doc["spec"]["template"]


def ours(container: dict[str, Any]) -> bool:
    return container.get("image") in DAEMON_IMAGES


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def exported_metrics() -> set[str]:
    """Every sample name the daemon and lambda-server export."""

    class View:
        waiting = 0

        def live_instances(self) -> list[Any]:
            return []

    names: set[str] = set()
    registries = [
        DaemonMetrics("fn", 1, View(), lambda: True).registry,
        ServerMetrics(lambda: True).registry,
    ]
    for registry in registries:
        text = generate_latest(registry).decode()
        for family in text_string_to_metric_families(text):
            names |= {sample.name for sample in family.samples}
            if family.type == "counter":  # a labelled counter has no sample until counted
                names.add(f"{family.name}_total")
    return names


def test_there_are_manifests_for_every_piece() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents()}
    for expected in (
        ("Deployment", "hello"),
        ("Deployment", "echo-http"),
        ("Deployment", "lambda-server"),
        ("Service", "lambda-server"),
        ("StatefulSet", "rabbitmq"),
        ("ScaledObject", "hello"),
        ("HorizontalPodAutoscaler", "echo-http"),
        ("Pod", "echo"),
    ):
        assert expected in kinds


def test_names_are_dns_labels() -> None:
    for doc in documents():
        assert DNS_LABEL.match(doc["metadata"]["name"]), doc["metadata"]["name"]


def test_env_vars_are_settings_with_valid_values() -> None:
    for _, pod in pod_specs():
        for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            if not ours(container) and container["name"] != "install-daemon":
                continue
            for name, value in env_of(container).items():
                if name in OTHER_VARIABLES:
                    continue
                assert name in SETTINGS, f"{container['name']}: {name} is no setting"
                if not name.endswith("_FILE"):
                    SETTINGS[name].parse(value)  # raises for a bad value


def test_ports_and_probes_match_the_settings() -> None:
    for _, pod in pod_specs():
        annotations = pod.get("metadata", {}).get("annotations", {})
        for container in pod["spec"]["containers"]:
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                check = container.get(probe)
                if check is None:
                    continue
                target = check.get("httpGet") or check.get("tcpSocket")
                assert target["port"] in ports or target["port"] in ports.values()
            if not ours(container):
                continue
            env = env_of(container)
            assert ports.get("http", 8080) == int(env.get("PORT", "8080"))
            if "METRICS_PORT" in env:
                assert ports["metrics"] == int(env["METRICS_PORT"])
                assert annotations["prometheus.io/port"] == env["METRICS_PORT"]
                for probe in ("readinessProbe", "livenessProbe"):
                    get = container.get(probe, {}).get("httpGet")
                    if get and get["port"] == "metrics":
                        assert get["path"] == "/metrics"
            else:
                assert "metrics" not in ports


def test_termination_grace_covers_the_shutdown_grace() -> None:
    for _, pod in pod_specs():
        for container in pod["spec"]["containers"]:
            if not ours(container):
                continue
            grace = float(env_of(container).get("SHUTDOWN_GRACE_PERIOD", SHUTDOWN_GRACE.default))
            needed = math.ceil(grace + RUNTIME_STOP_GRACE)
            given = pod["spec"].get("terminationGracePeriodSeconds")
            if given is None:
                assert needed <= 30  # Kubernetes' default
            else:
                assert given == needed, f"{container['name']}: {given} s, needs {needed} s"


def test_services_select_pods_and_name_their_ports() -> None:
    pods = list(pod_specs())
    for doc in documents():
        if doc["kind"] != "Service":
            continue
        selector = doc["spec"]["selector"]
        matching = [
            p
            for _, p in pods
            if selector.items() <= p.get("metadata", {}).get("labels", {}).items()
        ]
        assert matching, f"service {doc['metadata']['name']} selects no pod"
        for port in doc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for pod in matching:
                named = {
                    (p.get("name"), p["containerPort"])
                    for c in pod["spec"]["containers"]
                    for p in c.get("ports", [])
                }
                assert any(target in pair for pair in named)


def workloads() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] == "Deployment"}


def test_keda_scales_a_function_on_its_own_queue() -> None:
    scaled = [d for d in documents() if d["kind"] == "ScaledObject"]
    assert scaled
    for obj in scaled:
        target = workloads()[obj["spec"]["scaleTargetRef"]["name"]]
        container = target["spec"]["template"]["spec"]["containers"][0]
        function = env_of(container)["AWS_LAMBDA_FUNCTION_NAME"]
        assert "AMQP_URI" in env_of(container) or "AMQP_URI_FILE" in env_of(container)
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] == function
        assert trigger["metadata"]["mode"] == "QueueLength"
        auth = trigger["authenticationRef"]["name"]
        assert any(
            d["kind"] == "TriggerAuthentication" and d["metadata"]["name"] == auth
            for d in documents()
        )


def test_hpa_scales_on_an_exported_metric() -> None:
    exported = exported_metrics()
    adapter = next(d for d in documents() if d["kind"] == "ConfigMap")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    served = {}
    for rule in rules:
        series = re.match(r"^([a-z_:]+)", rule["seriesQuery"])
        assert series and series.group(1) in exported
        served[rule["name"]["as"]] = series.group(1)
    for hpa in (d for d in documents() if d["kind"] == "HorizontalPodAutoscaler"):
        target = workloads()[hpa["spec"]["scaleTargetRef"]["name"]]
        container = target["spec"]["template"]["spec"]["containers"][0]
        assert "METRICS_PORT" in env_of(container)
        for metric in hpa["spec"]["metrics"]:
            assert metric["pods"]["metric"]["name"] in served
            limit = int(env_of(container)["MAX_CONCURRENCY"])
            assert float(metric["pods"]["target"]["averageValue"]) <= limit


@pytest.mark.parametrize(
    "path", [EXAMPLES / "grafana-dashboard.json"], ids=["grafana-dashboard.json"]
)
def test_dashboard_uses_only_exported_metrics(path: Path) -> None:
    exported = exported_metrics()
    dashboard = json.loads(path.read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert len(expressions) >= 8
    for expr in expressions:
        names = set(re.findall(r"\blambda_rapid_[a-z_]+", expr))
        assert names, expr
        assert names <= exported, names - exported
