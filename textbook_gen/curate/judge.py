"""The LLM judge: rubric rendering and score parsing. The calls themselves go through the
generation engine and run store (cached, resumable, counted in cost): see ``run.make_judge``."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import jinja2

MAX_EXTRACT_CHARS = 12_000  # long documents are judged on their opening, as FineWeb-Edu did
_SCORE = re.compile(r"educational score\s*[:=]\s*\**\s*(\d(?:\.\d+)?)", re.I)


@cache
def _template() -> jinja2.Template:
    from textbook_gen.prompts import data_dir

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("prompts"))),
                             undefined=jinja2.StrictUndefined, autoescape=False)
    return env.get_template("judge.md.j2")


def judge_prompt(record: dict[str, Any]) -> str:
    module = _template().make_module({
        "text": record.get("text", "")[:MAX_EXTRACT_CHARS],
        "kind": record.get("kind") or "",
        "audience": record.get("audience") or "",
    })
    system = str(getattr(module, "system", "")).strip()
    return (system + "\n\n" if system else "") + str(module).strip()


def parse_judge_score(text: str) -> int | None:
    """The last "Educational score: N" in the answer, clamped to 0-5; None if there is none."""
    found = _SCORE.findall(text or "")
    if not found:
        return None
    return max(0, min(5, round(float(found[-1]))))
