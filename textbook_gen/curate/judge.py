"""The LLM judge: rubric rendering, score parsing, and the judge's calls, which go through
the generation engine, the run store and the run's ledger (cached, resumable, one budget)."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import jinja2

from textbook_gen.errors import Interrupted
from textbook_gen.providers.base import Request

if TYPE_CHECKING:
    from textbook_gen.ledger import Ledger
    from textbook_gen.progress import Progress
    from textbook_gen.spec import Curriculum, ModelSettings
    from textbook_gen.store import RunStore

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


def judge_model(spec: Curriculum) -> ModelSettings:
    """The judge's model settings: the spec's model, with the judge's provider and name if set."""
    settings, model = spec.curation.judge, spec.model
    return model.model_copy(update={"provider": settings.provider or model.provider,
                                    "name": settings.model or model.name})


def judge_request(record: dict[str, Any], model: ModelSettings, max_tokens: int) -> Request:
    return Request.build(model.provider, model.name, [("user", judge_prompt(record))],
                         {"max_tokens": max_tokens, "temperature": 0.0, "seed": 0})


def make_judge(spec: Curriculum, store: RunStore, progress: Progress,
               ledger: Ledger) -> Callable[[list[dict[str, Any]]], dict[str, float | None]]:
    """The LLM judge as curation calls it: scores through the generation engine, run store
    and the run's ledger (cached, resumable, inside the run's one budget)."""
    from textbook_gen.engine import Engine
    from textbook_gen.generator import WorkItem, drive
    from textbook_gen.run import make_providers, spec_price

    judge_spec = spec.model_copy(update={"model": judge_model(spec)})
    price = spec_price(judge_spec)
    max_tokens = spec.curation.judge.max_tokens

    def judge(records: list[dict[str, Any]]) -> dict[str, float | None]:
        items = [WorkItem(f"judge:{r['id']}", judge_request(r, judge_spec.model, max_tokens))
                 for r in records]
        engine = Engine(make_providers(judge_spec), store, spec.engine, price, ledger=ledger,
                        stage="judge")
        stats = drive(engine, iter(items), len(items), progress, "judge")
        if stats.stop_reason == "budget":
            raise ledger.exceeded(stats.done, stats.total)
        if stats.stop_reason == "interrupted":
            raise Interrupted("stopped while judging; every score received is stored. Run the"
                              " same command again to continue.")
        scores: dict[str, float | None] = {}
        for r, item in zip(records, items, strict=True):
            stored = store.get_response(item.request.key)
            ok = stored is not None and stored.status == "ok"
            scores[r["id"]] = parse_judge_score(stored.text or "") if ok else None  # type: ignore[union-attr]
        return scores

    return judge
