"""`python -m bench --docs` rewrites docs/benchmarks.md but keeps the single-executable section."""

from bench.__main__ import kept_section

DOC = "# Benchmarks\n\nintro\n\n## Latest results\n\nold table\n\n## Single executable\n\nfigures\n"


def test_the_single_executable_section_is_carried_over() -> None:
    kept = kept_section(DOC, "## Single executable")
    assert kept == "\n## Single executable\n\nfigures\n"
    assert "old table" not in kept


def test_a_following_section_is_not_carried_over() -> None:
    kept = kept_section(DOC + "\n## Other\n\nmore\n", "## Single executable")
    assert kept == "\n## Single executable\n\nfigures\n"


def test_nothing_is_kept_when_there_is_no_such_section() -> None:
    assert kept_section("# Benchmarks\n", "## Single executable") == ""
