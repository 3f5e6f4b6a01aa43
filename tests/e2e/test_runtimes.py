"""Real runtimes under the daemon (bash, Go, awslambdaric, the container entrypoint),
what their output looks like in the daemon's output, and the START/END/REPORT lines."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    BASH_RUNTIME,
    DAEMON,
    FUNCTIONS,
    MARKER,
    PROBE,
    REPO,
    Daemon,
    free_port,
    ok,
    poll,
    processes_with_marker,
    wait_for_port,
    wait_until_gone,
)

ENTRYPOINT = REPO / "examples" / "echo" / "lambda-entrypoint.sh"
DEFAULT_BOOTSTRAP_PATHS = ("/var/task/bootstrap", "/opt/bootstrap", "/var/runtime/bootstrap")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMQP_"))}
    env.update(extra)
    return env


# -- runtimes ---------------------------------------------------------------------------


def test_bash_runtime_echoes_json(start_daemon):
    daemon = start_daemon(
        [str(BASH_RUNTIME / "bootstrap")], env={"_HANDLER": "function.handler"}, cwd=BASH_RUNTIME
    )
    events = [{"hello": "bash"}, {"list": [1, 2, 3], "nested": {"a": None}}, "text", 42]
    for event in events:
        assert ok(daemon.invoke(event)) == event
    assert poll(lambda: daemon.stderr().count("handling request") >= len(events)), (
        "the bash handler's stderr did not reach the daemon's stderr"
    )
    assert len(daemon.runtime_pids()) >= 1


def test_go_runtime_echoes_json_twenty_times(start_daemon, go_echo):
    daemon = start_daemon([str(go_echo)])
    pids = set()
    for i in range(20):
        event = {"n": i, "text": f"go-{i}", "nested": {"list": list(range(i))}}
        response = daemon.invoke(event)
        assert ok(response) == event
        pids.update(daemon.runtime_pids())
    assert len(pids) == 1, f"the Go runtime was restarted: {pids}"
    assert poll(lambda: daemon.stderr().count("echo: request ") >= 20)


def test_go_runtime_error_reaches_the_invoker(start_daemon, go_echo):
    daemon = start_daemon([str(go_echo)], env={"ECHO_ERROR_MESSAGE": "go says no"})
    response = daemon.invoke({"n": 1})
    assert response.status == 200
    assert response.header("X-Amz-Function-Error") == "Unhandled"
    assert response.json() == {"errorMessage": "go says no", "errorType": "errorString"}


def test_no_command_and_no_bootstrap_exits_2_with_one_line(tmp_path):
    if any(os.path.exists(p) for p in DEFAULT_BOOTSTRAP_PATHS):
        pytest.skip("a default bootstrap exists on this machine")
    env = clean_env(
        PORT=str(free_port()), RUNTIME_API_PORT=str(free_port()), INVOKE_API_HOST="127.0.0.1"
    )
    result = subprocess.run(
        [DAEMON], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "bootstrap" in lines[0]
    assert result.stdout == ""


# -- the container entrypoint -----------------------------------------------------------


def test_entrypoint_without_runtime_api_starts_the_daemon(tmp_path):
    token = uuid.uuid4().hex
    port, runtime_port = free_port(), free_port()
    env = clean_env(
        **{
            MARKER: token,
            "LAMBDA_DAEMON": DAEMON,
            "PYTHON": sys.executable,
            "PORT": str(port),
            "RUNTIME_API_PORT": str(runtime_port),
            "INVOKE_API_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [str(ENTRYPOINT), "fn.handler"],
            cwd=FUNCTIONS,
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    daemon = Daemon(proc, port, runtime_port, token, tmp_path, "fn")
    try:
        wait_for_port(port, proc)
        assert ok(daemon.invoke({"via": "entrypoint"})) == {"via": "entrypoint"}
        pids = daemon.runtime_pids()
        assert len(pids) == 1
        cmdline = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
        assert b"awslambdaric" in cmdline and b"fn.handler" in cmdline, cmdline
        assert Path(cmdline[0].decode()).resolve() == Path(sys.executable).resolve()
    finally:
        assert daemon.stop() == 0


class FakeRuntimeApi(BaseHTTPRequestHandler):
    """Serves one event on /next, records posts, and parks later /next calls."""

    server: Any

    def do_GET(self) -> None:  # noqa: N802
        if not self.path.endswith("/runtime/invocation/next"):
            self.send_error(404)
            return
        with self.server.lock:
            self.server.next_calls += 1
            first = self.server.next_calls == 1
        if not first:
            self.server.release.wait(30)
            return
        body = b'{"hello": "direct"}'
        self.send_response(200)
        self.send_header("Lambda-Runtime-Aws-Request-Id", "direct-request-1")
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
        self.send_header(
            "Lambda-Runtime-Invoked-Function-Arn",
            "arn:aws:lambda:us-east-1:123456789012:function:fn",
        )
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.posts.append((self.path, body))
        reply = b'{"status":"OK"}'
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


def test_entrypoint_with_runtime_api_runs_the_runtime_directly(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRuntimeApi)
    server.daemon_threads = True
    server.next_calls = 0
    server.posts = []
    server.lock = threading.Lock()
    server.release = threading.Event()
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    token = uuid.uuid4().hex
    env = clean_env(
        **{
            MARKER: token,
            "PYTHON": sys.executable,
            "LAMBDA_DAEMON": "/bin/false",
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_address[1]}",
        }
    )
    proc = subprocess.Popen(
        [str(ENTRYPOINT), "fn.handler"],
        cwd=FUNCTIONS,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert poll(lambda: server.posts, timeout=20), "the runtime never answered"
        path, body = server.posts[0]
        assert path == "/2018-06-01/runtime/invocation/direct-request-1/response"
        assert json.loads(body) == {"hello": "direct"}
        # exec'd in place: the entrypoint's process is now the runtime itself
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"awslambdaric" in cmdline and b"fn.handler" in cmdline, cmdline
        assert poll(lambda: server.next_calls >= 2), "the runtime did not ask for more work"
    finally:
        proc.kill()
        proc.wait(10)
        server.release.set()
        server.shutdown()
        server.server_close()
        wait_until_gone(token)
    assert processes_with_marker(token) == []


@pytest.mark.parametrize("args", [[], ["a.handler", "extra"]])
def test_entrypoint_needs_exactly_one_argument(args):
    result = subprocess.run(
        [str(ENTRYPOINT), *args],
        env=clean_env(LAMBDA_DAEMON="/bin/false"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 142
    assert "handler" in result.stderr


# -- output -------------------------------------------------------------------------------


def test_function_output_reaches_the_daemons_output(fn_daemon):
    tag = uuid.uuid4().hex
    ok(fn_daemon.invoke({"print": f"out-{tag}", "stderr": f"err-{tag}"}))
    assert poll(lambda: f"out-{tag}\n" in fn_daemon.stdout()), fn_daemon.stdout()
    assert poll(lambda: f"err-{tag}\n" in fn_daemon.stderr()), fn_daemon.stderr()
    assert f"err-{tag}" not in fn_daemon.stdout()
    assert f"out-{tag}" not in fn_daemon.stderr()


@pytest.mark.parametrize("writer", ["chunks", "print"])
def test_long_lines_of_concurrent_instances_stay_whole(start_daemon, writer):
    lines, width = 200, 3000
    if writer == "chunks":  # odd-sized os.write calls to stdout and stderr
        daemon = start_daemon(
            PROBE, env={"MAX_CONCURRENCY": "2", "AWS_LAMBDA_FUNCTION_TIMEOUT": "60"}
        )

        def event(letter: str) -> dict[str, Any]:
            return {"spray": {"letter": letter, "lines": lines, "width": width, "chunk": 777}}

        streams = ("stdout", "stderr")
    else:  # fn.py: one big print() of many lines
        daemon = start_daemon(env={"MAX_CONCURRENCY": "2", "AWS_LAMBDA_FUNCTION_TIMEOUT": "60"})

        def event(letter: str) -> dict[str, Any]:
            return {"print": "\n".join([letter * width] * lines)}

        streams = ("stdout",)
    with ThreadPoolExecutor(2) as executor:  # two warm instances first
        warm = [executor.submit(daemon.invoke, {"sleep": 0.5}) for _ in range(2)]
        for future in warm:
            assert future.result(timeout=60).status == 200
        futures = [executor.submit(daemon.invoke, event(letter)) for letter in "ab"]
        for future in futures:
            assert future.result(timeout=60).status == 200

    for stream in streams:
        read = getattr(daemon, stream)

        def complete(read: Any = read) -> bool:
            whole = read().split("\n")
            return whole.count("a" * width) >= lines and whole.count("b" * width) >= lines

        # Every whole line (a line holds many runs of 50 letters, so count lines): on a
        # loaded machine the daemon's output writer may lag the answers.
        poll(complete, timeout=60)
        text = read()
        counts = {"a": 0, "b": 0}
        for line in text.split("\n"):
            if "aaaaaaaaaa" in line or "bbbbbbbbbb" in line:
                letter = line[0]
                assert line in ("a" * width, "b" * width), (
                    f"broken line in daemon {stream}: {len(line)} chars, "
                    f"{line[:40]!r}...{line[-40:]!r}"
                )
                counts[letter] += 1
        assert counts == {"a": lines, "b": lines}, f"{stream}: {counts}"


# -- platform lines -----------------------------------------------------------------------

REPORT = re.compile(
    r"REPORT RequestId: (?P<id>[0-9a-f-]{36})\tDuration: (?P<duration>\d+\.\d{2}) ms\t"
    r"Billed Duration: (?P<billed>\d+) ms\tMemory Size: (?P<memory>\d+) MB\t"
    r"Max Memory Used: (?P<used>\d+) MB\t(?:Init Duration: (?P<init>\d+\.\d{2}) ms\t)?$"
)


def report_for(daemon: Any, request_id: str) -> re.Match[str]:
    def find() -> re.Match[str] | None:
        for line in daemon.stdout().split("\n"):
            if line.startswith(f"REPORT RequestId: {request_id}"):
                match = REPORT.match(line)
                assert match, f"malformed REPORT line: {line!r}"
                return match
        return None

    match = poll(find)
    assert match, f"no REPORT line for {request_id}:\n{daemon.stdout()}"
    return match  # type: ignore[no-any-return]


def test_print_reports_writes_start_end_report(start_daemon):
    daemon = start_daemon(PROBE, env={"PRINT_REPORTS": "TRUE", "AWS_LAMBDA_FUNCTION_TIMEOUT": "30"})
    ids = []
    for event in ({"tag": "cold"}, {"alloc": 100}, {"tag": "warm"}):
        response = daemon.invoke(event)
        ok(response)
        ids.append(response.header("x-amzn-RequestId"))
    reports = [report_for(daemon, request_id) for request_id in ids]
    lines = daemon.stdout().split("\n")
    for request_id in ids:
        start = lines.index(f"START RequestId: {request_id} Version: $LATEST")
        end = lines.index(f"END RequestId: {request_id}")
        report = next(
            i
            for i, line in enumerate(lines)
            if line.startswith(f"REPORT RequestId: {request_id}\t")
        )
        assert start < end < report
    for match in reports:
        assert match["memory"] == "3008"
        duration = float(match["duration"])
        assert int(match["billed"]) >= max(1, math.ceil(duration))
        assert int(match["used"]) > 0
    cold, alloc, warm = reports
    assert cold["init"] is not None, "no Init Duration on the cold start"
    assert float(cold["init"]) > 0
    assert int(cold["billed"]) >= math.ceil(float(cold["duration"]) + float(cold["init"])) - 1
    assert alloc["init"] is None and warm["init"] is None, "Init Duration on a warm start"
    assert int(alloc["used"]) >= int(cold["used"]) + 80, (
        f"Max Memory Used did not grow after allocating 100 MB: {cold['used']} -> {alloc['used']}"
    )


def test_report_uses_the_configured_memory_size(start_daemon):
    daemon = start_daemon(env={"PRINT_REPORTS": "TRUE", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512"})
    response = daemon.invoke({"context": 1})
    assert ok(response)["memory_limit_in_mb"] in ("512", 512)
    assert report_for(daemon, response.header("x-amzn-RequestId"))["memory"] == "512"


def test_no_platform_lines_without_print_reports(fn_daemon):
    first, second = (f"marker-{uuid.uuid4().hex}" for _ in range(2))
    ok(fn_daemon.invoke({"print": first}))
    ok(fn_daemon.invoke({"print": second}))
    # Lines about the first invocation, and the second's START, would come before this.
    assert poll(lambda: second in fn_daemon.stdout())
    out = fn_daemon.stdout()
    assert "START RequestId" not in out
    assert "END RequestId" not in out
    assert "REPORT RequestId" not in out


def test_function_output_lies_between_start_and_end(start_daemon):
    daemon = start_daemon(env={"PRINT_REPORTS": "TRUE"})
    ids = {}
    for i in range(30):
        tag = f"inside-{i}-{uuid.uuid4().hex}"
        response = daemon.invoke({"print": tag})
        ok(response)
        ids[response.header("x-amzn-RequestId")] = tag
    for request_id in ids:
        report_for(daemon, request_id)
    lines = daemon.stdout().split("\n")
    for request_id, tag in ids.items():
        start = lines.index(f"START RequestId: {request_id} Version: $LATEST")
        end = lines.index(f"END RequestId: {request_id}")
        assert start < lines.index(tag) < end, (
            f"function output {tag!r} is outside START..END of its invocation"
        )


def test_new_instance_after_a_timeout_reports_init_duration_again(start_daemon):
    daemon = start_daemon(env={"PRINT_REPORTS": "TRUE", "AWS_LAMBDA_FUNCTION_TIMEOUT": "1"})
    first = daemon.invoke({"pid": 1})
    timed_out = daemon.invoke({"sleep": 5})
    assert timed_out.json()["errorType"] == "Sandbox.Timedout"
    after = daemon.invoke({"pid": 1})
    assert ok(after)["pid"] != ok(first)["pid"]
    assert report_for(daemon, first.header("x-amzn-RequestId"))["init"] is not None
    assert report_for(daemon, after.header("x-amzn-RequestId"))["init"] is not None
    request_id = timed_out.header("x-amzn-RequestId")
    assert poll(lambda: f"END RequestId: {request_id}\n" in daemon.stdout())
    assert f"REPORT RequestId: {request_id}\t" in daemon.stdout()
