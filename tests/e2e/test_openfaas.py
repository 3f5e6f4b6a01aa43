"""OpenFaaS watchdog mode: POST /, GET /_/health and GET /_/ready on the Invoke API."""

import json
import threading
import time


def test_watchdog_routes_are_off_by_default(fn_daemon):
    assert fn_daemon.request("POST", "/", b"{}").status == 404
    assert fn_daemon.request("GET", "/_/health").status == 404


def test_health_and_invoke_on_root(start_daemon):
    daemon = start_daemon(env={"ENABLE_OPENFAAS": "TRUE"})
    assert daemon.request("GET", "/_/health").status == 200
    echoed = daemon.request("POST", "/", json.dumps({"k": "v"}).encode())
    assert echoed.status == 200
    assert echoed.json() == {"k": "v"}
    failed = daemon.request("POST", "/", json.dumps({"raise": "nope"}).encode())
    assert failed.status == 500
    assert failed.json()["errorMessage"] == "nope"
    assert daemon.request("POST", "/", b"not json").status == 400
    # The Invoke API itself still works beside the watchdog routes.
    assert daemon.invoke({"a": 1}).json() == {"a": 1}


def test_ready_is_429_while_every_instance_is_busy(start_daemon):
    daemon = start_daemon(env={"ENABLE_OPENFAAS": "TRUE", "MAX_CONCURRENCY": "1"})
    assert daemon.request("GET", "/_/ready").status == 200
    worker = threading.Thread(target=daemon.invoke, args=({"sleep": 1.5},))
    worker.start()
    deadline = time.monotonic() + 5
    statuses = set()
    while worker.is_alive() and time.monotonic() < deadline:
        statuses.add(daemon.request("GET", "/_/ready").status)
        time.sleep(0.05)
    worker.join()
    assert 429 in statuses
    assert daemon.request("GET", "/_/ready").status == 200
