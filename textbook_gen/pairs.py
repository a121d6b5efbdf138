"""Preference pairs from a run of the closed loop: ``textbook-gen cat RUN --pairs``.

Best-of-n and revision leave, for many prompts, one chosen answer and others the judge scored
lower. Those are the ``{prompt, chosen, rejected}`` triples preference tuning (DPO and its
kin) trains on. A pair is written for every answer of a sample that the judge scored strictly
lower than the sample's chosen answer; the chosen one is the answer selection kept (in the
corpus, or set aside only by dedup or the cell's quota: a good answer either way). The prompt
is the sample's own prompt, read from the run store; a revision answers it too.

Three passes over the run's shards, holding ids and scores, and the texts of chosen answers
that have a pair; never the corpus.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textbook_gen.curate.pipeline import loop_of
from textbook_gen.errors import InputError
from textbook_gen.shards import iter_records

CHOSEN_REJECT_STAGES = ("dedup", "quota")  # set aside from the corpus, still the best answer


def _sample(r: dict[str, Any]) -> str | None:
    return loop_of(r).get("sample")


def _score(r: dict[str, Any]) -> float | None:
    q = r.get("quality") or {}
    return q.get("judge_score") if isinstance(q, dict) else None


def _lower(r: dict[str, Any]) -> bool:
    """A rejected answer that can be the loser of a pair: judged, and not the chosen one."""
    why = (r.get("rejected") or {}).get("stage")
    return _score(r) is not None and _sample(r) is not None and why in ("judge", "select")


def iter_pairs(run_dir: Path) -> Iterator[dict[str, Any]]:
    run_dir = Path(run_dir)
    store_path = run_dir / "run.sqlite"
    if not store_path.is_file():
        raise InputError(f"{run_dir}: --pairs needs a run directory with its run.sqlite (the"
                         " prompts are read from it)")
    lowest: dict[str, float] = {}  # sample -> lowest score among its losers
    for r in iter_records(run_dir, "rejects"):
        if _lower(r):
            s, score = str(_sample(r)), float(_score(r))  # type: ignore[arg-type]
            lowest[s] = min(score, lowest.get(s, score))
    chosen: dict[str, dict[str, Any]] = {}

    def consider(r: dict[str, Any]) -> None:
        s, score = _sample(r), _score(r)
        if s is not None and score is not None and s in lowest and lowest[s] < score:
            loop = loop_of(r)
            chosen[s] = {"id": r.get("id"), "text": r.get("text", ""), "score": score,
                         "task": loop.get("task_sha256") or r["provenance"].get("prompt_sha256")}

    for r in iter_records(run_dir, "shards"):
        consider(r)
    for r in iter_records(run_dir, "rejects"):
        if (r.get("rejected") or {}).get("stage") in CHOSEN_REJECT_STAGES:
            consider(r)
    if not chosen:
        return
    from textbook_gen.store import RunStore

    with RunStore(store_path) as store:
        prompts: dict[str, tuple[str | None, str]] = {}
        for r in iter_records(run_dir, "rejects"):
            if not _lower(r):
                continue
            win = chosen.get(str(_sample(r)))
            if win is None or float(_score(r)) >= win["score"]:  # type: ignore[arg-type]
                continue
            if win["task"] not in prompts:
                req = store.get_request(win["task"])
                if req is None:
                    raise InputError(f"{store_path}: the prompt of {win['id']} (request"
                                     f" {win['task']}) is not in the store")
                user = next(c for role, c in req.messages if role == "user")
                prompts[win["task"]] = (req.system, user)
            system, user = prompts[win["task"]]
            yield {"prompt": user, "system": system, "chosen": win["text"],
                   "rejected": r.get("text", ""),
                   "scores": {"chosen": win["score"], "rejected": _score(r)},
                   "chosen_id": win["id"], "rejected_id": r.get("id"),
                   "rejected_reason": (r.get("rejected") or {}).get("reason")}
