"""--help in the usual conventions, docs/cli.md generated from it and current, completion."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from conftest import REPO

from textbook_gen.cli import app
from textbook_gen.clidoc import render

COMMANDS = [None, *typer.main.get_command(app).commands]  # type: ignore[attr-defined]


def test_docs_cli_md_is_generated_from_the_current_help():
    current = (REPO / "docs" / "cli.md").read_text("utf-8")
    assert current == render(), ("docs/cli.md is stale: run"
                                 " `python -m textbook_gen.clidoc > docs/cli.md`")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c or "textbook-gen")
def test_help_has_no_type_placeholders_or_braced_arguments(command):
    args = [command, "--help"] if command else ["--help"]
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    for artefact in ("<bool>", "<int", "<float", "<str>", "<path>", "<list[", "[x>=", "{"):
        assert artefact not in proc.stdout, f"{artefact!r} in:\n{proc.stdout}"
    assert proc.stdout.startswith("Usage: textbook-gen")


def test_shell_completion_script_is_available():
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "--show-completion", "bash"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "complete" in proc.stdout
