"""METRICS_PORT: Prometheus metrics of the daemon and of lambda-server, scraped over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.broker import (
    Names,
    amqp_daemon,
    broker_url,
    names,
    publish_event,
    start_server,
    wait_for,
)
from tests.e2e.conftest import Daemon, free_port, poll

__all__ = ["amqp_daemon", "broker_url", "names", "start_server"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def metrics_daemon(start_daemon: Any, **env: str) -> tuple[Daemon, int]:
    port = free_port()
    daemon = start_daemon(env={"METRICS_PORT": str(port), **env})
    poll(lambda: _listening(port))
    return daemon, port


def _listening(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def test_invocations_counted_by_outcome_and_timed(start_daemon: Any) -> None:
    daemon, port = metrics_daemon(start_daemon, AWS_LAMBDA_FUNCTION_TIMEOUT="1")
    for event in ({"a": 1}, {"raise": "boom"}, {"exit": 3}, {"sleep": 5}, {"a": 2}):
        assert daemon.invoke(event).status == 200
    _, samples = scrape(port)
    total = "lambda_rapid_invocations_total"
    assert value(samples, total, function="fn", outcome="success") == 2
    assert value(samples, total, function="fn", outcome="function_error") == 1
    assert value(samples, total, function="fn", outcome="crash") == 1
    assert value(samples, total, function="fn", outcome="timeout") == 1
    assert value(samples, total, function="fn", outcome="throttled") == 0
    errors = "lambda_rapid_errors_total"
    assert value(samples, errors, function="fn", error_type="ValueError") == 1
    assert value(samples, errors, function="fn", error_type="Runtime.ExitError") == 1
    assert value(samples, errors, function="fn", error_type="Sandbox.Timedout") == 1
    fn = {"function": "fn"}
    assert value(samples, "lambda_rapid_invocation_duration_seconds_count", **fn) == 5
    assert value(samples, "lambda_rapid_instance_wait_seconds_count", **fn) == 5
    # One cold start per instance: the first, and the ones after the crash and the timeout.
    assert value(samples, "lambda_rapid_init_duration_seconds_count", **fn) == 3
    init_sum = value(samples, "lambda_rapid_init_duration_seconds_sum", **fn)
    assert init_sum is not None and init_sum > 0
    responses = "lambda_rapid_http_responses_total"
    assert value(samples, responses, server="invoke", code="200") == 5


def test_instance_gauges_follow_the_pool(start_daemon: Any) -> None:
    daemon, port = metrics_daemon(start_daemon, MAX_CONCURRENCY="3")
    _, samples = scrape(port)
    assert value(samples, "lambda_rapid_concurrency_limit", function="fn") == 3
    assert value(samples, "lambda_rapid_instances", function="fn", state="busy") == 0
    busy = daemon.send_invoke({"sleep": 30})

    def one_busy() -> bool:
        _, now = scrape(port)
        return value(now, "lambda_rapid_instances", function="fn", state="busy") == 1

    poll(one_busy)
    assert value(scrape(port)[1], "lambda_rapid_invocations_waiting", function="fn") == 0
    busy.close()
    # The busy instance finishes its sleep only after the test; no AMQP gauge without a broker.
    assert "lambda_rapid_amqp_connected" not in scrape(port)[0]


def test_events_and_refusals_counted(start_daemon: Any) -> None:
    daemon, port = metrics_daemon(start_daemon)
    headers = {"X-Amz-Invocation-Type": "Event"}
    assert daemon.invoke({"a": 1}, headers=headers).status == 202
    assert daemon.invoke({"a": 1}, name="other").status == 404

    def served() -> bool:
        _, now = scrape(port)
        return value(now, "lambda_rapid_invocations_total", function="fn", outcome="success") == 1

    poll(served)
    _, samples = scrape(port)
    assert value(samples, "lambda_rapid_events_queued_total", function="fn") == 1
    assert value(samples, "lambda_rapid_http_responses_total", server="invoke", code="202") == 1
    assert value(samples, "lambda_rapid_http_responses_total", server="invoke", code="404") == 1


def gateway_get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_gateway_answers_counted(start_daemon: Any) -> None:
    gateway = free_port()
    _, port = metrics_daemon(start_daemon, GATEWAY_PORT=str(gateway), GATEWAY_STAGE="prod")
    assert gateway_get(gateway, "/prod/a") == 200
    assert gateway_get(gateway, "/elsewhere") == 404
    _, samples = scrape(port)
    responses = "lambda_rapid_http_responses_total"
    assert value(samples, responses, server="gateway", code="200") == 1
    assert value(samples, responses, server="gateway", code="404") == 1
    assert value(samples, responses, server="invoke", code="200") == 0
    success = value(samples, "lambda_rapid_invocations_total", function="fn", outcome="success")
    assert success == 1


def test_metrics_port_serves_only_metrics(start_daemon: Any) -> None:
    _, port = metrics_daemon(start_daemon)
    for method, path, status in (
        ("GET", "/", 404),
        ("GET", "/other", 404),
        ("POST", "/metrics", 405),
    ):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"")
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError(f"{method} {path} was served")
        except urllib.error.HTTPError as error:
            assert error.code == status


def test_off_by_default_and_not_imported() -> None:
    code = (
        "import sys, lambda_rapid.daemon, lambda_rapid.lambda_server, lambda_rapid.cli;"
        "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'watchfiles',"
        " 'lambda_rapid.metrics', 'lambda_rapid.watch'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


def test_amqp_events_retried_and_dead_lettered(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    port = free_port()
    amqp_daemon(
        name,
        {"METRICS_PORT": str(port), "MAXIMUM_RETRY_ATTEMPTS": "1", "RETRY_DELAY": "0"},
    )
    _, samples = scrape(port)
    assert value(samples, "lambda_rapid_amqp_connected", function=name) == 1
    publish_event(names.url, name, {"raise": "always"})

    def dead_lettered() -> Samples | None:
        _, now = scrape(port)
        dead = value(now, "lambda_rapid_events_dead_lettered_total", function=name)
        return now if dead == 1 else None

    samples = wait_for(dead_lettered)
    assert samples
    assert value(samples, "lambda_rapid_events_retried_total", function=name) == 1
    failed = value(
        samples, "lambda_rapid_invocations_total", function=name, outcome="function_error"
    )
    assert failed == 2


def test_lambda_server_metrics(names: Names, amqp_daemon: Any, start_server: Any) -> None:
    name = names.function()
    amqp_daemon(name)
    port, gateway = free_port(), free_port()
    server = start_server({"METRICS_PORT": str(port), "GATEWAY_PORT": str(gateway)})
    poll(lambda: _listening(port))

    def connected() -> bool:
        return value(scrape(port)[1], "lambda_rapid_amqp_connected", function="") == 1

    poll(connected)
    path = f"/2015-03-31/functions/{name}/invocations"
    assert server.request("POST", path, b'{"a": 1}').status == 200
    assert server.request("POST", path, b'{"raise": "x"}').status == 200
    missing = "/2015-03-31/functions/no-such-function-here/invocations"
    assert server.request("POST", missing, b"{}").status == 404
    assert gateway_get(gateway, f"/{name}/a") == 200
    _, samples = scrape(port)
    total = "lambda_rapid_invocations_total"
    assert value(samples, total, function=name, outcome="success") == 2
    assert value(samples, total, function=name, outcome="function_error") == 1
    assert value(samples, "lambda_rapid_invocation_duration_seconds_count", function=name) == 3
    errors = "lambda_rapid_errors_total"
    assert value(samples, errors, function=name, error_type="ValueError") == 1
    assert value(samples, "lambda_rapid_http_responses_total", server="invoke", code="404") == 1
    assert value(samples, "lambda_rapid_http_responses_total", server="gateway", code="200") == 1
