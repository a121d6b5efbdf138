"""Everything about a spec that can be checked before a request is paid for: templates
rendered for every distinct combination of their variables, and every file the spec names.
``validate`` prints these problems; ``run`` refuses to start while there are any. It also
warns of what a spec does beyond its folder (``spec_warnings``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _is_local(url: str) -> bool:
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host in ("::1", "0.0.0.0")


def spec_warnings(spec: Curriculum) -> list[str]:
    """What a spec does that its user should know it does: a spec names files and environment
    variables and is trusted like code. Warned: an API key sent from a variable that is not
    the provider's own to a server not on this machine, and files read from outside the
    spec's folder."""
    from textbook_gen.providers import provider_class

    warnings: list[str] = []
    m = spec.model
    default_env = getattr(provider_class(m.provider), "key_env_var", None)
    remote = [u for u in m.base_url if not _is_local(u)]
    if m.api_key_env and m.api_key_env != default_env and remote:
        warnings.append(
            f"{spec.where('model', 'api_key_env')}: model.api_key_env: the value of"
            f" ${m.api_key_env} is sent as the API key to {', '.join(remote)}; a spec is"
            " trusted like code: run it only if you expect this")
    base = spec.source_path.parent.resolve()
    named: list[tuple[tuple[Any, ...], str]] = []
    if spec.templates:
        named.append((("templates",), spec.templates))
    if spec.seeds is not None:
        named.append((("seeds", "path"), spec.seeds.path))
    named += [(("subjects", i, "include"), s.include) for i, s in enumerate(spec.subjects)
              if s.include]
    named += [(("curation", "decontaminate", i, "path"), b.path)
              for i, b in enumerate(spec.curation.decontaminate)]
    personas = _personas_file(spec.source_path)
    if personas:
        named.append((("personas",), personas))
    for key, name in named:
        path = (base / name).resolve()
        if not path.is_relative_to(base):
            warnings.append(f"{spec.where(*key)}: {'.'.join(str(k) for k in key)}: reads {path},"
                            f" outside the spec's folder {base}; a spec is trusted like code:"
                            " run it only if you expect this")
    return warnings


def _personas_file(path: Path) -> str | None:
    """The file ``personas:`` names, if it names one (the spec holds its lines, not its name)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    found = data.get("personas") if isinstance(data, dict) else None
    return found if isinstance(found, str) else None


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError:
        return False
    return True
