"""Secret files, password masking in /proc, sealing and RUNTIME_USER parsing."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lambda_rapid.config import ConfigError, daemon_config, server_config
from lambda_rapid.credentials import (
    RuntimeUser,
    mask,
    needles,
    parse_runtime_user,
    read_secret_file,
)

COMMAND = [sys.executable, "-c", "pass"]


def test_secret_file_loses_only_its_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(" pass word \n")
    assert read_secret_file(str(path)) == " pass word "


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_missing_or_empty_secret_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="cannot read|empty"):
        read_secret_file(str(path))


def test_password_file_fills_in_the_password(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    env = {"AMQP_URI": "amqp://broker:5672/", "AMQP_PASSWORD_FILE": str(tmp_path / "pw")}
    config = daemon_config(COMMAND, env)
    assert config.amqp is not None
    assert config.amqp.url == "amqp://guest:s3cret@broker:5672/"


def test_uri_file_stands_in_for_the_default_uri_of_lambda_server(tmp_path: Path) -> None:
    (tmp_path / "uri").write_text("amqp://u:p@elsewhere:5673/\n")
    config = server_config([], {"AMQP_URI_FILE": str(tmp_path / "uri")})
    assert config.amqp.url == "amqp://u:p@elsewhere:5673/"


def test_bad_uri_in_a_file_is_named_by_its_path_not_its_content(tmp_path: Path) -> None:
    (tmp_path / "uri").write_text("http://u:topsecret@host/")
    with pytest.raises(ConfigError) as error:
        daemon_config(COMMAND, {"AMQP_URI_FILE": str(tmp_path / "uri")})
    assert "AMQP_URI_FILE" in str(error.value)
    assert "topsecret" not in str(error.value)


def test_secret_files_are_not_handed_to_runtimes(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    env = {"AMQP_URI": "amqp://h/", "AMQP_PASSWORD_FILE": str(tmp_path / "pw"), "KEEP": "1"}
    config = daemon_config(COMMAND, env)
    assert dict(config.runtime_environ) == {"KEEP": "1"}


def test_mask_covers_every_form_and_keeps_lengths() -> None:
    forms = needles("p@ss/w")
    data = b"--amqp-password=p@ss/w\0AMQP_URI=amqp://u:p%40ss%2Fw@h/\0X=p%40ss/w\0"
    masked = mask(data, forms)
    assert len(masked) == len(data)
    assert b"p@ss" not in masked and b"p%40ss" not in masked
    assert masked.count(b"\0") == data.count(b"\0")
    assert b"amqp://u:" in masked and b"@h/" in masked


def test_conceal_password_masks_cmdline_and_environ_of_the_process() -> None:
    script = textwrap.dedent(
        """
        import sys
        from lambda_rapid.config import daemon_config
        from lambda_rapid.credentials import conceal_password
        conceal_password(daemon_config(sys.argv[1:]).amqp)
        for name in ("cmdline", "environ"):
            data = open(f"/proc/self/{name}", "rb").read()
            print(name, b"hunter2" in data, b"AMQP_PASSWORD=*******" in data)
        """
    )
    env = dict(os.environ, AMQP_PASSWORD="hunter2")
    args = ["--amqp-password", "hunter2", "--amqp-uri", "amqp://u:hunter2@h/"]
    result = subprocess.run(
        [sys.executable, "-c", script, *args, *COMMAND],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "cmdline False" in result.stdout, result.stdout
    assert "environ False True" in result.stdout, result.stdout


def test_runtime_user_by_number_needs_no_passwd_entry() -> None:
    assert parse_runtime_user("54321") == RuntimeUser(54321, 54321, (54321,))
    assert parse_runtime_user("54321:54322") == RuntimeUser(54321, 54322, (54322,))


def test_runtime_user_by_name() -> None:
    entry = pwd.getpwnam("nobody")
    user = parse_runtime_user("nobody")
    assert (user.uid, user.gid) == (entry.pw_uid, entry.pw_gid)
    assert set(user.groups) == set(os.getgrouplist("nobody", entry.pw_gid))


@pytest.mark.parametrize("value", ["no-such-user-here", ":5", "nobody:no-such-group"])
def test_bad_runtime_user(value: str) -> None:
    with pytest.raises(ValueError):
        parse_runtime_user(value)
