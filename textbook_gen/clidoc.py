"""docs/cli.md from the commands' own --help, so the page cannot drift from the code.

    python -m textbook_gen.clidoc > docs/cli.md      # tests/test_cli_help.py checks it is current
"""

from __future__ import annotations

WIDTH = 100


def render() -> str:
    import typer
    from typer.testing import CliRunner

    from textbook_gen.cli import app

    runner = CliRunner()
    group = typer.main.get_command(app)
    names = [None, *group.commands]  # type: ignore[attr-defined]
    out = ["# Command-line reference", "",
           "Generated from each command's `--help` by `python -m textbook_gen.clidoc > docs/cli.md`;",
           "a test keeps it current.", ""]
    for name in names:
        args = [name, "--help"] if name else ["--help"]
        result = runner.invoke(app, args, env={"COLUMNS": str(WIDTH), "TERM": "dumb",
                                               "NO_COLOR": "1"}, terminal_width=WIDTH)
        out += [f"## textbook-gen{' ' + name if name else ''}", "", "```text",
                result.output.rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
