"""A hostile function hunting for a secret in other processes' /proc files.

Event: {"needle_hex": "<the secret, hex-encoded>"} (so that the event itself, which the
daemon holds in memory too, does not contain the secret). It reads /proc/<pid>/environ
and cmdline of every process it can, and the whole readable memory of its parent (the
daemon, through /proc/<ppid>/maps and mem). It also proves it can live as an
unprivileged user: it writes a file in /tmp and reopens /dev/stdout and /dev/stderr to
print a line on each. Runs under awslambdaric (`snoop.handler`) or, with nothing but the
standard library, as its own runtime (`python3 snoop.py`), for interpreters that a
RUNTIME_USER may run.
Returns {"uid", "gid", "groups", "ppid", "cap_eff", "hits": [[pid, file], ...],
"parent": {"environ"|"cmdline"|"mem": "found"|"clean"|"denied"}, "tmp": bool}.
"""

import json
import os
import urllib.request


def _read(path):
    with open(path, "rb") as file:
        return file.read()


def _scan(path, needle):
    try:
        return "found" if needle in _read(path) else "clean"
    except PermissionError:
        return "denied"
    except OSError as error:
        return f"error {error.errno}"


def _scan_memory(pid, needle):
    try:
        maps = _read(f"/proc/{pid}/maps").decode().splitlines()
        memory = open(f"/proc/{pid}/mem", "rb", buffering=0)  # noqa: SIM115
    except PermissionError:
        return "denied"
    with memory:
        for line in maps:
            fields = line.split()
            if fields[1][0] != "r" or (len(fields) > 5 and fields[5] == "[vvar]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                memory.seek(start)
                if needle in memory.read(end - start):
                    return "found"
            except OSError:
                continue
    return "clean"


def _capabilities():
    for line in _read("/proc/self/status").decode().splitlines():
        if line.startswith("CapEff:"):
            return line.split()[1]
    return None


def _use_tmp_and_output():
    path = f"/tmp/snoop-{os.getpid()}"
    with open(path, "w") as file:
        file.write("ok")
    os.unlink(path)
    for stream in ("stdout", "stderr"):
        with open(f"/dev/{stream}", "w") as file:
            file.write(f"SNOOP wrote to /dev/{stream} as uid {os.getuid()}\n")
    return True


def handler(event, context):
    needle = bytes.fromhex(event["needle_hex"])
    hits = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for name in ("environ", "cmdline"):
            if _scan(f"/proc/{entry}/{name}", needle) == "found":
                hits.append([int(entry), name])
    ppid = os.getppid()
    parent = {name: _scan(f"/proc/{ppid}/{name}", needle) for name in ("environ", "cmdline")}
    parent["mem"] = _scan_memory(ppid, needle)
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "ppid": ppid,
        "cap_eff": _capabilities(),
        "hits": hits,
        "parent": parent,
        "tmp": _use_tmp_and_output(),
    }


class _Context:
    aws_request_id = None


def serve():
    """A minimal runtime loop: next → handler → response."""
    base = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime/invocation"
    while True:
        with urllib.request.urlopen(f"{base}/next") as response:
            request_id = response.headers["Lambda-Runtime-Aws-Request-Id"]
            event = json.loads(response.read())
        body = json.dumps(handler(event, _Context())).encode()
        urllib.request.urlopen(f"{base}/{request_id}/response", data=body).close()


if __name__ == "__main__":
    serve()
