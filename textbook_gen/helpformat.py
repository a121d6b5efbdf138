"""--help in the usual command-line conventions, for every command of the CLI.

typer 0.29 prints each value's type (``<bool>``, ``<int range> [x>=1]``) and braces round
arguments (``{spec}``); ``Command`` names values and arguments instead (``SPEC``, ``N``,
``PATH``) and leaves flags without a placeholder.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption


class Command(TyperCommand):
    """typer's command, with help in the usual conventions: ``SPEC`` not ``{spec}`` in usage,
    flags without a value placeholder, each option's value named (N, PATH, URL) not typed."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for p in self.params:
            if isinstance(p, TyperArgument):
                p.metavar = p.metavar or (p.name or "").upper() + ("..." if p.nargs != 1 else "")
                p.display_type_rich = _no_type  # type: ignore[method-assign]  # metavar names it
            elif isinstance(p, TyperOption):
                if p.is_flag:
                    p.metavar = ""
                elif p.metavar is None:
                    p.metavar = _value_name(p.type_descriptor.annotation)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                pieces.append(str(p.metavar) if p.required else f"[{p.metavar}]")
        return pieces


def _no_type(ctx: Any) -> None:
    return None


def _value_name(annotation: Any) -> str:
    text = str(annotation)
    for marker, name in (("Path", "PATH"), ("int", "N"), ("float", "NUMBER")):
        if marker in text:
            return name
    return "TEXT"


class App(typer.Typer):
    def command(self, *args: Any, **kwargs: Any) -> Any:  # every command gets Command
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)
