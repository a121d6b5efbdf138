"""The LLM judge: rubric rendering, score parsing, and the judge's calls, which go through
the generation engine, the run store and the run's ledger (cached, resumable, one budget)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.sandbox

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

    env = jinja2.sandbox.SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(data_dir("prompts"))),
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


_CRITIQUE = re.compile(r"^\W*critique\W*:\s*", re.I | re.M)
MAX_CRITIQUE_CHARS = 1500


def parse_critique(text: str) -> str:
    """The judge's critique: what follows "Critique:" (or, without it, the answer), up to the
    score line."""
    text = text or ""
    found = list(_SCORE.finditer(text))
    if found:
        text = text[:found[-1].start()]
    m = _CRITIQUE.search(text)
    if m:
        text = text[m.end():]
    return text.strip().rstrip("*").strip()[:MAX_CRITIQUE_CHARS]


@dataclass(frozen=True)
class JudgeScore:
    """The judge's verdict on one document; ``missing`` says why there is no score, if none."""

    score: float | None
    critique: str = ""
    missing: str | None = None  # "budget" (not paid for) | "failed" (the judge's call failed)
    error: str = ""  # missing == "failed": the kind and the provider's reason


# Models measured unable to judge with the bundled rubric (see the closing note of issue 12):
# their answers carry no parseable score, or a score unrelated to the text.
CANNOT_JUDGE = {
    ("local", "smollm2-135m-instruct"): (
        "the bundled local model (SmolLM2-135M) cannot judge: given the rubric it praised a page"
        " of spam and scored it 1, and gave a good textbook page no score at all"),
}
# a judge that leaves this share of its first JUDGE_PROBE answers without a score is stopped
JUDGE_PROBE = 8
UNUSABLE_SHARE = 0.5


def cannot_judge(provider: str, model: str) -> str | None:
    """Why this model cannot serve as the judge, where that is known; None otherwise."""
    return CANNOT_JUDGE.get((provider, model))


def judge_model(spec: Curriculum) -> ModelSettings:
    """The judge's model settings: the spec's model, with the judge's provider and name if set."""
    settings, model = spec.curation.judge, spec.model
    return model.model_copy(update={"provider": settings.provider or model.provider,
                                    "name": settings.model or model.name})


def judge_request(record: dict[str, Any], model: ModelSettings, max_tokens: int) -> Request:
    return Request.build(model.provider, model.name, [("user", judge_prompt(record))],
                         {"max_tokens": max_tokens, "temperature": 0.0, "seed": 0})


def make_judge(spec: Curriculum, store: RunStore, progress: Progress, ledger: Ledger, *,
               pay: bool = True, sent: set[str] | None = None
               ) -> Callable[[list[dict[str, Any]]], dict[str, JudgeScore]]:
    """The LLM judge as curation calls it: scores through the generation engine, run store
    and the run's ledger (cached, resumable, inside the run's one budget). With ``pay`` false
    it only reads scores already stored (a run whose budget ran out still writes outputs);
    documents without one get ``missing="budget"``. ``sent``: the keys of judge requests
    this command sent already (the closed loop curates every round again): one of them that
    failed is not sent again, its failure stands until a rerun.

    A judge whose first answers mostly carry no score cannot judge: it stops the run with
    ``JudgeUnusable`` instead of rejecting every document as unscored."""
    from textbook_gen.errors import JudgeUnusable
    from textbook_gen.generator import WorkItem
    from textbook_gen.run import send_side_stage

    judge_spec = spec.model_copy(update={"model": judge_model(spec)})
    max_tokens = spec.curation.judge.max_tokens
    seen = {"answers": 0, "unscored": 0}

    def judge(records: list[dict[str, Any]]) -> dict[str, JudgeScore]:
        items = [WorkItem(f"judge:{r['id']}", judge_request(r, judge_spec.model, max_tokens))
                 for r in records]
        if sent is not None:
            items_to_send = [i for i in items if i.request.key not in sent]
            sent.update(i.request.key for i in items)
        else:
            items_to_send = items
        if pay and items_to_send:
            send_side_stage(judge_spec, store, ledger, items_to_send, progress, "judge",
                            "judging")
        scores: dict[str, JudgeScore] = {}
        for r, item in zip(records, items, strict=True):
            stored = store.get_response(item.request.key)
            if stored is None:
                # not paid for: the budget ran out (pay false), or the run was stopped
                scores[r["id"]] = JudgeScore(None, "", "budget")
                continue
            if stored.status != "ok":
                scores[r["id"]] = JudgeScore(None, "", "failed",
                                             f"{stored.error_kind}: {stored.error}")
                continue
            text = stored.text or ""
            score = parse_judge_score(text)
            scores[r["id"]] = JudgeScore(score, parse_critique(text))
            if seen["answers"] < JUDGE_PROBE:
                seen["answers"] += 1
                seen["unscored"] += score is None
                if (seen["answers"] == JUDGE_PROBE
                        and seen["unscored"] >= UNUSABLE_SHARE * JUDGE_PROBE):
                    raise JudgeUnusable(
                        f"the judge ({judge_spec.model.provider} {judge_spec.model.name}) gave"
                        f" no parseable score for {seen['unscored']} of its first"
                        f" {JUDGE_PROBE} answers, so it cannot judge; the last one began:"
                        f" {text[:160]!r}. Set curation.judge.model to a stronger model, or"
                        " turn the judge off. Everything paid for is stored.")
        return scores

    return judge
