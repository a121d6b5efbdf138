"""``textbook-gen grow``: the model proposes a subject's topics (and, deeper, their subtopics)
with one-line notes of key concepts, written as a YAML file that the spec includes and the user
edits (GLAN's syllabus from a taxonomy; Cosmopedia's subtopics).

The calls go through the run's store, engine and ledger like any paid call: cached (a rerun
sends nothing), costed (``plan`` prices them) and resumable. An answer that is not a list is
an error, and nothing is written; near-identical names are merged; the file is validated as
a topics file before it replaces anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from textbook_gen.errors import ConfigError, InputError
from textbook_gen.expand import job_seed
from textbook_gen.ledger import Ledger
from textbook_gen.progress import Progress
from textbook_gen.providers.base import Request
from textbook_gen.spec import Curriculum, Subject, TopicFile, slugify

_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*(?:\*\*)?(?P<name>[^:*]{2,120}?)(?:\*\*)?\s*:\s*"
                   r"(?P<notes>\S.*?)\s*$")
DEFAULT_TOPICS = 12  # at the first level (`grow --topics`)
SUBTOPICS = 4  # per topic below the first level
GROW_MAX_TOKENS = 1200


@dataclass(frozen=True)
class Grown:
    name: str
    notes: str
    parent: str = ""


def parse_topics(text: str) -> list[tuple[str, str]]:
    """``- name: key concepts`` lines of an answer; other lines are ignored."""
    out = []
    for line in (text or "").splitlines():
        m = _LINE.match(line)
        if m:
            out.append((m["name"].strip().strip("*_`\"'").strip(), m["notes"].strip()))
    return [(n, k) for n, k in out if n]


def _key(name: str) -> str:
    words = re.sub(r"[^a-z0-9 ]+", " ", name.lower()).split()
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words)


def merge(items: list[Grown]) -> list[Grown]:
    """Drop names near-identical to an earlier one: the same words once case, punctuation,
    plurals, "and"/"the" and word order are set aside ("Eigenvectors and eigenvalues" is
    "Eigenvalues and eigenvectors"; "Part 1" and "Part 2" differ)."""
    kept: list[Grown] = []
    keys: set[frozenset[str]] = set()
    for it in items:
        k = frozenset(w for w in _key(it.name).split() if w not in ("and", "the", "a", "of"))
        if k in keys:
            continue
        kept.append(it)
        keys.add(k)
    return kept


def grow_request(spec: Curriculum, renderer: Any, subject: Subject, parent: tuple[str, str],
                 count: int) -> Request:
    tmpl = renderer.template("grow.md.j2")
    module = tmpl.make_module({
        "curriculum": {"name": spec.name, "description": spec.description},
        "subject": subject.name, "subject_description": subject.description,
        "parent": parent[0], "parent_notes": parent[1], "count": count,
        "audiences": spec.audiences})
    messages = []
    system = str(getattr(module, "system", "")).strip()
    if system:
        messages.append(("system", system))
    messages.append(("user", str(module).strip()))
    seed = job_seed(spec.seed, f"grow/{slugify(subject.name)}/{slugify(parent[0] or '-')}/{count}")
    return Request.build(spec.model.provider, spec.model.name, messages,
                         {"temperature": 0.7, "max_tokens": GROW_MAX_TOKENS, "seed": seed})


def target_file(spec: Curriculum, subject: Subject) -> Path:
    """Where a subject's grown topics go: its ``include`` file, or ``<slug>.topics.yaml``."""
    name = subject.include or f"{slugify(subject.name)}.topics.yaml"
    return spec.source_path.parent / name


def render_file(spec: Curriculum, subject: Subject, items: list[Grown], depth: int,
                prompt_sha: str) -> str:
    head = (f"# Topics of {subject.name!r}, grown by `textbook-gen grow` with"
            f" {spec.model.provider}/{spec.model.name} on {dt.date.today().isoformat()}\n"
            f"# (depth {depth}; prompts sha256 {prompt_sha[:16]}). Review and edit it: the spec"
            " includes it\n# (include: in its subject); a rerun of grow sends nothing it has"
            " sent before.\n")
    data = {"subject": subject.name, "topics": [{"name": it.name, "notes": it.notes}
                                                for it in items]}
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def grow_subject(spec: Curriculum, subject: Subject, *, topics: int, depth: int,
                 ask: Callable[[list[Request]], list[str | None]]) -> tuple[list[Grown], str]:
    """Grow one subject, level by level; return its leaves and a hash of every prompt."""
    from textbook_gen.prompts import PromptRenderer

    renderer = PromptRenderer(spec)
    level = [Grown("", "")]
    digest = hashlib.sha256()
    for d in range(depth):
        count = topics if d == 0 else SUBTOPICS
        reqs = [grow_request(spec, renderer, subject, (g.name, g.notes), count) for g in level]
        for r in reqs:
            digest.update(r.key.encode())
        answers = ask(reqs)
        nxt: list[Grown] = []
        for parent, req, text in zip(level, reqs, answers, strict=True):
            if text is None:
                raise InputError(f"grow: the request for {parent.name or subject.name!r} got no"
                                 " answer (see the run's failures); nothing was written")
            found = parse_topics(text)
            if not found:
                raise InputError(
                    f"grow: the model's answer for {parent.name or subject.name!r} is not a"
                    f" list of '- name: key concepts' lines (request {req.key[:12]}); it began:"
                    f" {text[:200]!r}. Nothing was written. Try a stronger model (--model), or"
                    " edit prompts/grow.md.j2 into your templates folder")
            prefix = f"{parent.name}: " if parent.name else ""
            nxt += [Grown(prefix + n, k, parent.name) for n, k in found]
        level = merge(nxt)
    return level, digest.hexdigest()


def write_topics(path: Path, text: str) -> None:
    """Validate the grown file as a topics file, then write it atomically."""
    data = yaml.safe_load(text)
    try:
        TopicFile.model_validate(data)
    except Exception as e:  # noqa: BLE001 - a pydantic error: the model's names are unusable
        raise InputError(f"grow: the grown topics do not make a valid topics file ({e});"
                         " nothing was written") from None
    from textbook_gen.shards import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def run_grow(spec: Curriculum, subjects: list[Subject], *, topics: int, depth: int,
             out_dir: Path, progress: Progress, force: bool = False) -> list[tuple[Path, int]]:
    """Grow each subject through the run store (cached) and the ledger; write its file."""
    from textbook_gen.generator import WorkItem
    from textbook_gen.run import check_provider, send_side_stage
    from textbook_gen.store import RunStore

    paths = [target_file(spec, s) for s in subjects]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} already exists; it may hold your edits. Pass --force"
                          " to write it again (answers already paid for are reused)")
    check_provider(spec)
    ledger = Ledger(spec.engine.max_cost_usd, spec.engine.max_total_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with RunStore(out_dir / "run.sqlite", exclusive=True) as store:

        def ask(reqs: list[Request]) -> list[str | None]:
            items = [WorkItem(f"grow:{r.key[:16]}", r, "grow") for r in reqs]
            send_side_stage(spec, store, ledger, items, progress, "grow", "growing")
            out: list[str | None] = []
            for r in reqs:
                got = store.get_response(r.key)
                out.append(got.text if got is not None and got.status == "ok" else None)
            return out

        for subject, path in zip(subjects, paths, strict=True):
            items, digest = grow_subject(spec, subject, topics=topics, depth=depth, ask=ask)
            write_topics(path, render_file(spec, subject, items, depth, digest))
            written.append((path, len(items)))
    return written


def grow_requests_at_most(topics: int, depth: int) -> int:
    """Requests one subject's growth sends at most."""
    total, level = 0, 1
    for d in range(depth):
        total += level
        level *= topics if d == 0 else SUBTOPICS
    return total
