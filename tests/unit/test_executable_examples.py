"""The single-executable examples, checked without a container engine."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not words[1].startswith("--from"):
            sources.extend(words[1:-1])
    return sources


def test_dockerfiles_copy_files_that_exist_or_the_build_makes() -> None:
    built = {"dist/lambda-runtime-api-daemon"}
    for name in ("scratch-go", "python-base-image", "kubernetes"):
        for source in copy_sources(EXAMPLES / name / "Dockerfile"):
            assert source in built or (REPO / source).exists(), (name, source)


def test_the_base_image_example_installs_the_executable_as_aws_lambda_rie() -> None:
    text = (EXAMPLES / "python-base-image" / "Dockerfile").read_text()
    assert "COPY dist/lambda-runtime-api-daemon /usr/local/bin/aws-lambda-rie" in text


def test_the_run_script_is_valid_shell_and_mounts_the_executable() -> None:
    script = EXAMPLES / "scratch-go" / "run.sh"
    subprocess.run(["sh", "-n", str(script)], check=True)
    text = script.read_text()
    assert "lambda-runtime-api-daemon:/usr/local/bin/aws-lambda-rie" in text
    assert "--tmpfs /tmp" in text


def mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def test_the_init_container_copies_the_daemon_where_the_function_starts_it() -> None:
    documents = list(yaml.safe_load_all((EXAMPLES / "kubernetes" / "echo.yaml").read_text()))
    pod = next(d for d in documents if d["kind"] == "Pod")
    (init,) = pod["spec"]["initContainers"]
    (function,) = pod["spec"]["containers"]
    assert {"name": "KUBERNETES_INIT_CONTAINER", "value": "true"} in init["env"]
    shared = mounts(init)["/tmp"]
    command = Path(function["command"][0])
    assert mounts(function)[str(command.parent)] == shared
    assert command.name == "lambda-runtime-api-daemon"  # the init container's file name
    assert "/tmp" in mounts(function)  # where the executable unpacks itself
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    assert set(mounts(init).values()) | set(mounts(function).values()) <= volumes
