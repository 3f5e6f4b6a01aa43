"""Only an instance's own processes may use its Runtime API address.

Strangers (any other local process, or another instance's runtime) get 403 and no payload,
and their attempts do not disturb the instance that owns the address.
"""

import contextlib
import json
import os
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.conftest import FUNCTIONS, ok, poll, wait_for_port

NEXT = b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n"
PROBER = [sys.executable, str(FUNCTIONS / "prober.py")]


def raw_request(port: int, request: bytes = NEXT, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if len(body) >= length:
                    return data
        return data


def status_and_body(answer: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_stranger_gets_403_and_the_idle_runtime_keeps_serving(fn_daemon):
    ok(fn_daemon.invoke({"n": 1}))  # the runtime now waits in /next
    status, body = status_and_body(raw_request(fn_daemon.runtime_port))
    assert status == 403
    assert set(body) == {"errorMessage", "errorType"}
    for n in range(2, 4):
        assert ok(fn_daemon.invoke({"n": n})) == {"n": n}


def test_two_strangers_at_once_do_not_kill_the_idle_runtime(fn_daemon):
    ok(fn_daemon.invoke({"n": 1}))
    pids = fn_daemon.runtime_pids()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: raw_request(fn_daemon.runtime_port), range(2)))
    assert [status_and_body(a)[0] for a in answers] == [403, 403]
    assert ok(fn_daemon.invoke({"n": 2})) == {"n": 2}
    assert fn_daemon.runtime_pids() == pids, "the instance was replaced"


def test_a_stranger_during_a_cold_start_gets_no_payload(start_daemon):
    daemon = start_daemon(PROBER)
    wait_for_port(daemon.runtime_port, daemon.proc)
    answers: list[bytes] = []
    stranger = threading.Thread(target=lambda: answers.append(raw_request(daemon.runtime_port)))
    # Connect before the runtime exists: the first invocation is still starting it.
    invoking = ThreadPoolExecutor(1).submit(daemon.invoke, {"secret": 42})
    stranger.start()
    stranger.join(15)
    assert ok(invoking.result(15)) == {"secret": 42}
    assert answers and status_and_body(answers[0])[0] == 403
    assert b"42" not in answers[0]


def test_one_instance_cannot_use_another_instances_address(start_daemon):
    daemon = start_daemon(PROBER, env={"MAX_CONCURRENCY": "2"})
    with ThreadPoolExecutor(2) as pool:  # two concurrent invocations: two instances
        list(pool.map(lambda n: ok(daemon.invoke({"n": n})), range(2)))
    addresses = [f"127.0.0.1:{port}" for port in runtime_api_ports(daemon)]
    assert len(addresses) == 2
    for _ in range(2):
        probes = ok(daemon.invoke({"probe": addresses}))
        assert [p["status"] for p in probes] == [403], probes
        assert "errorType" in probes[0]["body"]
    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(lambda n: ok(daemon.invoke({"n": n}))["n"], range(2))) == [0, 1]


def runtime_api_ports(daemon) -> list[int]:
    """The TCP ports the daemon listens on, other than its Invoke API's."""
    inodes = set()
    for fd in os.listdir(f"/proc/{daemon.proc.pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{daemon.proc.pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = []
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.append(int(fields[1].split(":")[1], 16))
    return [port for port in ports if port != daemon.port]


def test_a_descendant_in_its_own_session_is_served(start_daemon):
    daemon = start_daemon(PROBER, env={"PROBER_SETSID": "1"})
    for n in range(3):
        assert ok(daemon.invoke({"n": n})) == {"n": n}
    assert poll(lambda: len(daemon.runtime_pids()) == 2)


def test_with_the_check_off_a_stranger_is_answered_as_the_runtime(start_daemon):
    bogus = (
        b"POST /2018-06-01/runtime/invocation/x/response HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    )
    checked = start_daemon()
    ok(checked.invoke({"n": 1}))
    assert status_and_body(raw_request(checked.runtime_port, bogus))[0] == 403
    unchecked = start_daemon(env={"RUNTIME_API_PEER_CHECK": "FALSE"})
    ok(unchecked.invoke({"n": 1}))
    status, body = status_and_body(raw_request(unchecked.runtime_port, bogus))
    assert (status, body["errorType"]) == (400, "InvalidRequestID")
