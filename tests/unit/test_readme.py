"""The README documents every setting exactly as the settings table declares it."""

from pathlib import Path

from lambda_rapid.config import ALL_DAEMON_SETTINGS, settings_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_matches_the_code() -> None:
    assert settings_markdown(ALL_DAEMON_SETTINGS) in README.read_text()


def test_readme_commands_are_the_ones_ci_runs() -> None:
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = next(line for line in ci.splitlines() if "pytest" in line)
    assert test_command in text
    assert "lambda-runtime-api-daemon python -m awslambdaric echo.handler" in text
