"""amqps:// finds a CA bundle even where the Python build's default path does not exist."""

import urllib.parse
from pathlib import Path

from lambda_rapid.config import amqp_config, ca_file


def test_ssl_cert_file_wins(tmp_path: Path) -> None:
    bundle = tmp_path / "mine.pem"
    bundle.write_text("x")
    assert ca_file({"SSL_CERT_FILE": str(bundle)}, "/usr/lib/ssl/cert.pem") == str(bundle)


def test_python_default_is_kept_when_it_exists(tmp_path: Path) -> None:
    other = tmp_path / "other.crt"
    other.write_text("x")
    assert ca_file({}, "/usr/lib/ssl/cert.pem", [str(other)]) is None


def test_first_existing_common_location_when_the_default_is_missing(tmp_path: Path) -> None:
    scratch = tmp_path / "ca-certificates.crt"
    scratch.write_text("x")
    candidates = [str(tmp_path / "missing.crt"), str(scratch)]
    assert ca_file({}, None, candidates) == str(scratch)
    assert ca_file({}, None, [str(tmp_path / "missing.crt")]) is None


def test_amqps_url_names_the_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    config = amqp_config("amqps://broker:5671/", None, None, {"SSL_CERT_FILE": str(bundle)})
    assert config is not None
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(config.url).query)
    assert query["cafile"] == [str(bundle)]
    assert "cafile" not in config.display


def test_explicit_cafile_and_plain_amqp_are_left_alone(tmp_path: Path) -> None:
    env = {"SSL_CERT_FILE": str(tmp_path / "ca.pem")}
    config = amqp_config("amqps://broker/?cafile=/etc/own.pem", None, None, env)
    assert config is not None and "cafile=%2Fetc%2Fown.pem" in config.url
    plain = amqp_config("amqp://broker/", None, None, env)
    assert plain is not None and "cafile" not in plain.url
