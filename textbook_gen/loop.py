"""The closed loop: ask for kept documents, not requests.

A run goes in rounds. Round 1 sends the first pass: per cell (a document kind at one place,
audience and style) ``target_kept`` samples (or ``samples`` without a target), each as
``candidates`` answers to the same prompt. After every round the stored answers of all the
samples issued so far are curated (filters, verify, judge, select, decontaminate, dedup,
quota) into a build beside the outputs, and the loop reads two figures from it:

- survivors per cell: a cell under its target gets new samples (new sample numbers, so new
  seeds and seed words), never past ``max_samples``; pending revisions count as hopes;
- the best judged answer of each sample, where it scored under ``revise.below``: it goes back
  to the writer with the judge's critique (``revise.md.j2``), at most ``revise.rounds`` times;
  a revision is a new candidate of its sample, chosen only if it scores higher.

When a round has nothing left to send, its build is committed. Each round's work is a pure
function of the rounds before it and the stored answers (the judge reads at temperature 0 and
its answers are stored too), so a rerun replays the rounds from the store, sends only what was
never answered, and ends with the same records as a run that was never interrupted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from textbook_gen.curate.pipeline import Best, CurationResult, LoopCuration
from textbook_gen.curate.verify import Verdicts
from textbook_gen.expand import Cell, Job, candidate_job, cells, revision_job
from textbook_gen.generator import WorkItem
from textbook_gen.prompts import PromptRenderer
from textbook_gen.records import record_for
from textbook_gen.spec import Curriculum
from textbook_gen.store import RunStore


@dataclass(frozen=True)
class Revision:
    """One revision issued for a sample: what it revised and the judge's word on it."""

    source: str  # id of the record revised (a candidate, or an earlier revision)
    score: float
    critique: str


@dataclass
class Round:
    """What one round sends: generation (new samples) and revisions, as work items."""

    number: int
    samples: list[tuple[Cell, int, int]] = field(default_factory=list)  # (cell, from n, to n)
    revisions: list[tuple[Cell, int, int]] = field(default_factory=list)  # (cell, n, round)

    @property
    def empty(self) -> bool:
        return not self.samples and not self.revisions


class Loop:
    """The loop's state (samples and revisions issued per cell) and its decisions."""

    def __init__(self, spec: Curriculum, renderer: PromptRenderer, store: RunStore,
                 limit: int | None = None):
        self.spec, self.renderer, self.store, self.limit = spec, renderer, store, limit
        self.identity = store.job_identity
        self.revise = spec.curation.revise if spec.curation.enabled else None
        self.issued: dict[str, int] = {}  # cell -> samples issued, where past the first pass
        self.revisions: dict[str, list[Revision]] = {}  # sample id -> revisions issued
        self.round = Round(1)
        self.has_targets = any(d.target_kept for d in spec.documents)
        self.verified: Verdicts = {}  # every round curates every answer; exercises run once
        self.judged: set[str] = set()  # judge requests sent this command: a failure stands

    # -- what the spec asks -------------------------------------------------------------
    def cells(self) -> Iterator[Cell]:
        return cells(self.spec, self.limit, self.identity)

    def curation(self) -> LoopCuration:
        return LoopCuration(self.revise.below if self.revise is not None else None,
                            self.verified, self.judged)

    def sent(self, cell: Cell) -> int:
        return self.issued.get(cell.key, cell.first)

    def first_pass(self) -> int:
        """Generation requests of round 1."""
        return sum(c.first * c.candidates for c in self.cells())

    # -- work ---------------------------------------------------------------------------
    def work(self) -> tuple[Iterator[WorkItem], int, Iterator[WorkItem], int]:
        """This round's (samples, count, revisions, count) as work items, rendered lazily."""
        r = self.round
        if r.number == 1:
            first = ((c, 0, c.first) for c in self.cells())
            return self._sample_items(first), self.first_pass(), iter(()), 0
        count = sum((b - a) * c.candidates for c, a, b in r.samples)
        return (self._sample_items(iter(r.samples)), count,
                self._revision_items(r.revisions), len(r.revisions))

    def _sample_items(self, spans: Iterator[tuple[Cell, int, int]]) -> Iterator[WorkItem]:
        for cell, a, b in spans:
            for n in range(a, b):
                job = cell.job(n)
                req = self.renderer.render(job)
                for k in range(cell.candidates):
                    j = candidate_job(job, k)
                    yield WorkItem(j.id, req if k == 0 else self.renderer.render(j), j.kind,
                                   _display_cell(j))

    def _revision_items(self, revisions: list[tuple[Cell, int, int]]) -> Iterator[WorkItem]:
        for cell, n, r in revisions:
            job = self._revision_job(cell.job(n), r)
            yield WorkItem(job.id, self._revision_request(job), job.kind, _display_cell(job))

    def _revision_job(self, sample: Job, r: int) -> Job:
        assert self.revise is not None
        return revision_job(sample, r, self.revise.template)

    def _revision_request(self, job: Job) -> Any:
        assert self.revise is not None
        rev = self.revisions[job.sample_id][job.revision - 1]
        found = self.store.job_answer(rev.source)
        draft = found[0].text or "" if found is not None else ""
        return self.renderer.render(job, {"draft": draft, "critique": rev.critique or
                                          "(the reviewer gave no details)",
                                          "score": _score(rev.score),
                                          "below": _score(self.revise.below)})

    # -- what was issued ----------------------------------------------------------------
    def jobs(self) -> Iterator[tuple[Job, dict[str, Any]]]:
        """Every job issued so far, with its place in the loop, cell by cell and sample by
        sample (candidates, then revisions): the order curation chooses in."""
        for cell in self.cells():
            for n in range(self.sent(cell)):
                job = cell.job(n)
                revs = self.revisions.get(job.id, [])
                task = (self.renderer.render(job).key
                        if cell.candidates > 1 or revs else None)
                base = {"target": cell.target, "task_sha256": task}
                for k in range(cell.candidates):
                    yield candidate_job(job, k), base
                for r, rev in enumerate(revs, 1):
                    yield self._revision_job(job, r), {
                        **base, "revision_of": rev.source, "critique": rev.critique,
                        "draft_score": rev.score}

    def records(self) -> Iterator[dict[str, Any]]:
        """Records of every answered job issued so far, for curation."""
        for job, loop in self.jobs():
            found = self.store.job_answer(job.id)
            if found is not None and found[0].status == "ok":
                yield record_for(self.spec, job, found[0], self.renderer, found[1], loop,
                                 answer_start_chars=found[2])

    def job_failures(self) -> list[tuple[str, str, str]]:
        """(job id, kind, reason) of every issued job that did not end with an answer."""
        failed = []
        for job, _ in self.jobs():
            resp = self.store.job_response(job.id)
            if resp is None:
                failed.append((job.id, "no_answer", "no request of this job reached an end state"))
            elif resp.status != "ok":
                failed.append((job.id, resp.error_kind or "error", resp.error or ""))
        return failed

    # -- decisions ----------------------------------------------------------------------
    def advance(self, result: CurationResult) -> Round:
        """From a round's curation, the next round's work (empty: the loop is done)."""
        nxt = Round(self.round.number + 1)
        low: dict[str, list[tuple[str, Best]]] = defaultdict(list)
        for sample, best in result.low.items():
            low[best.cell].append((sample, best))
        judge = self.spec.curation.judge
        for cell in self.cells():
            kept, sent = result.cells.get(cell.key, 0), self.sent(cell)
            full = cell.target is not None and kept >= cell.target
            hopes = 0  # revisions that could add a kept document to the cell
            for sample, best in sorted(low.get(cell.key, []), key=lambda x: x[1].n):
                passing = best.score >= judge.min_score  # kept already: a revision improves it
                if self.revise is None or (full and not passing):
                    continue  # a full cell has no room for a document it does not keep yet
                done = self.revisions.setdefault(sample, [])
                if len(done) < self.revise.rounds:
                    done.append(Revision(best.record_id, best.score, best.critique))
                    nxt.revisions.append((cell, best.n, len(done)))
                    hopes += not passing
            need = (cell.target or 0) - kept - hopes
            if need > 0 and sent < cell.cap:
                add = min(need, cell.cap - sent)
                self.issued[cell.key] = sent + add
                nxt.samples.append((cell, sent, sent + add))
        self.round = nxt
        return nxt

    def coverage(self, result: CurationResult, stop: str | None) -> dict[str, Any] | None:
        """The manifest's coverage grid: per cell with a target, target, kept, samples and
        requests sent; cells short of their target with the reason they gave up."""
        if not self.has_targets:
            return None
        grid, short = [], []
        met = requests = kept_total = 0
        for cell in self.cells():
            if cell.target is None:
                continue
            sent = self.sent(cell)
            revs = sum(len(self.revisions.get(cell.job(n).id, [])) for n in range(sent)) \
                if self.revisions else 0
            kept = min(result.cells.get(cell.key, 0), cell.target)
            sent_requests = sent * cell.candidates + revs
            requests += sent_requests
            kept_total += kept
            job = cell.job(0)
            row = {"cell": cell.key, "kind": cell.kind, "place": job.topic or job.subject,
                   "target": cell.target, "kept": kept, "samples": sent,
                   "requests": sent_requests}
            grid.append(row)
            if kept >= cell.target:
                met += 1
                continue
            if sent >= cell.cap:
                why = (f"max_samples: {sent} of {cell.cap} samples sent, {kept} of"
                       f" {cell.target} kept")
            else:
                why = {"budget": "the budget ran out", None: "stopped"}.get(stop, stop or "")
            short.append({"cell": cell.key, "reason": why})
        return {"cells": len(grid), "target_met": met, "short": len(short),
                "kept": kept_total, "requests": requests,
                "requests_per_kept": round(requests / kept_total, 3) if kept_total else None,
                "gave_up": short, "grid": grid}


def _score(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _display_cell(job: Job) -> str:
    """The cell the live watch groups by (place, audience, style), as before the loop."""
    return "/".join(x for x in (job.topic or job.subject, job.audience, job.style) if x)
