"""Everything about a spec that can be checked before a request is paid for: templates
rendered for every distinct combination of their variables, and every file the spec names.
``validate`` prints these problems; ``run`` refuses to start while there are any."""

from __future__ import annotations

from pathlib import Path

from textbook_gen.prompts import PromptRenderer
from textbook_gen.spec import Curriculum


def spec_problems(spec: Curriculum, renderer: PromptRenderer | None = None) -> list[str]:
    problems = (renderer or PromptRenderer(spec)).check()
    base = spec.source_path.parent
    for i, b in enumerate(spec.curation.decontaminate):
        path = base / b.path
        where = spec.where("curation", "decontaminate", i)
        if not path.is_file():
            problems.append(f"{where}: benchmark file {path} does not exist (paths are relative"
                            " to the spec file)")
        elif not _readable(path):
            problems.append(f"{where}: benchmark file {path} cannot be read")
    if spec.seeds is not None:
        path = base / spec.seeds.path
        if not path.exists():
            problems.append(f"{spec.where('seeds', 'path')}: seeds.path: {path} does not exist"
                            " (paths are relative to the spec file)")
        elif path.is_file() and not _readable(path):
            problems.append(f"{spec.where('seeds', 'path')}: seeds.path: {path} cannot be read")
    return problems


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError:
        return False
    return True
