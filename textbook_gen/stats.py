"""A run's summary: coverage, rejections, quality, diversity and spend, read from its outputs.

``corpus_stats`` reads the manifest, then the kept records and the rejects once each; texts
are held only in bounded reservoir samples per document kind and per audience (see
``measures``), so memory does not grow with the corpus. Works on any run or ``curate``
output directory, with or without kept records. ``textbook-gen stats`` draws it with rich,
or prints ``as_json`` with ``--json``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textbook_gen import measures
from textbook_gen.curate.pipeline import reason_kind
from textbook_gen.shards import iter_records, read_manifest


@dataclass
class CorpusStats:
    manifest: dict[str, Any]
    coverage: dict[tuple[str, str], Counter[str]]  # (place, kind) -> kept / rejected counts
    reasons: Counter[str]  # "stage: reason" -> count
    verified: Counter[str]  # exercises documents: verified / failed / unchecked
    judge_scores: Counter[int]
    diversity: list[measures.KindDiversity]
    readability: dict[str, measures.Readability]  # per audience
    # for the report: bounded by construction
    judge_by_kind: dict[str, Counter[int]] = field(default_factory=dict)
    tokens_by_kind: dict[str, Counter[int]] = field(default_factory=dict)  # 50-token bins
    reason_examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # 2 each

    @property
    def targets(self) -> dict[tuple[str, str], int]:
        """(place, kind) -> documents the closed loop was asked to keep (target_kept)."""
        out: Counter[tuple[str, str]] = Counter()
        for row in (self.manifest.get("coverage") or {}).get("grid", []):
            out[(str(row.get("place") or "-"), str(row.get("kind") or "-"))] += row["target"]
        return dict(out)

    def as_json(self) -> dict[str, Any]:
        """Every figure ``render`` prints, for scripts (``stats --json``)."""
        m = self.manifest
        targets = self.targets
        return {
            "kept": self.kept, "rejected": self.rejected,
            "failed_jobs": (m.get("counts") or {}).get("failed", 0),
            "coverage": [{"place": p, "kind": k, "kept": c["kept"], "rejected": c["rejected"],
                          "target": targets.get((p, k))}
                         for (p, k), c in sorted(self.coverage.items())],
            "closed_loop": m.get("coverage"),
            "rejected_by_reason": dict(self.reasons.most_common()),
            "exercises": dict(self.verified),
            "judge_scores": {str(k): v for k, v in sorted(self.judge_scores.items())},
            "diversity": {"names": measures.DIVERSITY_NAMES,
                          "kinds": [kd.as_json() for kd in self.diversity]},
            "readability": {a: {"flesch_kincaid_grade": r.grade, "sample": r.sample}
                            for a, r in self.readability.items()},
            "usage": m.get("usage"),
        }

    @property
    def kept(self) -> int:
        return sum(c["kept"] for c in self.coverage.values())

    @property
    def rejected(self) -> int:
        return sum(c["rejected"] for c in self.coverage.values())


TOKEN_BIN = 50
EXAMPLES = 2
def corpus_stats(run_dir: Path, *, sample: int = measures.SAMPLE, seed: int = 0) -> CorpusStats:
    import random

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir) or {}
    rng = random.Random(seed)
    coverage: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    reasons: Counter[str] = Counter()
    verified: Counter[str] = Counter()
    scores: Counter[int] = Counter()
    by_kind: dict[str, measures.Reservoir[str]] = defaultdict(
        lambda: measures.Reservoir(sample, rng))
    by_audience: dict[str, measures.Reservoir[str]] = defaultdict(
        lambda: measures.Reservoir(sample, rng))
    judge_by_kind: dict[str, Counter[int]] = defaultdict(Counter)
    tokens_by_kind: dict[str, Counter[int]] = defaultdict(Counter)
    examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in iter_records(run_dir):
        kind = str(r.get("kind") or "-")
        coverage[(_place(r), kind)]["kept"] += 1
        text = measures.model_text(r)  # the model's writing, not the answer start its template wrote
        by_kind[kind].add(text)
        if r.get("audience"):
            by_audience[str(r["audience"])].add(text)
        q = r.get("quality") or {}
        if q.get("exercises_total"):
            verified["verified" if q.get("verified") else "failed"] += 1
        elif kind == "exercises":
            verified["unchecked"] += 1
        if q.get("judge_score") is not None:
            scores[round(float(q["judge_score"]))] += 1
            judge_by_kind[kind][round(float(q["judge_score"]))] += 1
        if q.get("tokens") is not None:
            tokens_by_kind[kind][int(q["tokens"]) // TOKEN_BIN * TOKEN_BIN] += 1
    for r in iter_records(run_dir, "rejects"):
        why = r.get("rejected") or {}
        coverage[(_place(r), str(r.get("kind") or "-"))]["rejected"] += 1
        reason = f"{why.get('stage', '?')}: {reason_kind(str(why.get('reason', '?')))}"
        reasons[reason] += 1
        if len(examples[reason]) < EXAMPLES:
            examples[reason].append({"id": r.get("id"), "text": str(r.get("text", ""))[:800],
                                     "detail": str(why.get("reason", "")) + "\n"
                                     + str(why.get("detail", ""))[:400]})
    diversity = [measures.kind_diversity(kind, res) for kind, res in sorted(by_kind.items())]
    readability = {a: measures.readability(res.items, min(sample, measures.READABILITY_SAMPLE))
                   for a, res in sorted(by_audience.items())}
    return CorpusStats(manifest, dict(coverage), reasons, verified, scores, diversity,
                       readability, dict(judge_by_kind), dict(tokens_by_kind), dict(examples))


def _place(r: dict[str, Any]) -> str:
    return str(r.get("topic") or r.get("subject") or "-")


def render(console: Any, s: CorpusStats, run_dir: Path) -> None:
    from rich.table import Table

    m = s.manifest
    counts = m.get("counts") or {}
    console.print(f"[bold]{run_dir}[/]: {s.kept:,} kept, {s.rejected:,} rejected"
                  + (f", {counts['failed']:,} failed jobs" if counts.get("failed") else ""))

    kinds = sorted({k for _, k in s.coverage})
    targets = s.targets
    grid = Table(title="coverage: kept / produced, per place and kind"
                 + (" (of target; red: short)" if targets else ""))
    grid.add_column("place")
    for k in kinds:
        grid.add_column(k, justify="right")
    for place in sorted({p for p, _ in s.coverage}):
        cells = []
        for k in kinds:
            c = s.coverage.get((place, k), Counter())
            total = c["kept"] + c["rejected"]
            target = targets.get((place, k))
            short = c["kept"] < target if target is not None else c["kept"] == 0
            cells.append("" if not total else f"{'[red]' if short else ''}{c['kept']}/{total}"
                         + (f" of {target}" if target is not None else ""))
        grid.add_row(place, *cells)
    console.print(grid)
    cov = m.get("coverage")
    if cov:
        console.print(f"closed loop: {cov['target_met']:,} of {cov['cells']:,} cells at target,"
                      f" {cov['requests']:,} generation requests"
                      f" ({cov['requests_per_kept'] or '-'} per kept document)")
        for g in cov["gave_up"][:10]:
            console.print(f"  short: {g['cell']}: {g['reason']}", markup=False)
        if len(cov["gave_up"]) > 10:
            console.print(f"  ... and {len(cov['gave_up']) - 10:,} more (manifest.json)")

    if s.reasons:
        t = Table(title="rejected, by stage and reason")
        t.add_column("reason")
        t.add_column("documents", justify="right")
        for reason, n in s.reasons.most_common():
            t.add_row(reason, f"{n:,}")
        console.print(t)

    quality = []
    if s.verified:
        quality.append("exercises: " + ", ".join(f"{k} {v}" for k, v in s.verified.items()))
    if s.judge_scores:
        quality.append("judge scores: " + ", ".join(
            f"{k}: {v}" for k, v in sorted(s.judge_scores.items())))
    for line in quality:
        console.print(line)

    if s.diversity:
        d = Table(title="diversity of kept documents, per kind: published figures (Shaib et"
                  " al. 2024, the diversity package's definitions; sample sizes in brackets)")
        for col in ("kind", "compression_ratio", "ngram_diversity_score (n<=4)",
                    "self_repetition_score", "homogenization_rougel"):
            d.add_column(col, justify="left" if col == "kind" else "right")
        for kd in s.diversity:
            h = kd.homogenization
            d.add_row(f"{kd.kind} ({kd.documents:,})",
                      f"{kd.compression.ratio:.3f} [{kd.compression.sample:,}]",
                      f"{kd.ngram_diversity.score:.3f} [{kd.ngram_diversity.sample:,}]",
                      f"{kd.self_repetition.score:.3f} [{kd.self_repetition.sample:,}]",
                      f"{h.score:.3f} [{h.sample:,}]")
        console.print(d)
        ours = Table(title="diversity, our measures (lower-cased words, within documents:"
                     " not the published distinct-n)")
        for col in ("kind", "most common opening", "word distinct-1/2/3", "near-duplicates"):
            ours.add_column(col)
        for kd in s.diversity:
            top = kd.openings.top[0] if kd.openings.top else ("", 0)
            dv = kd.distinct.values
            ours.add_row(f"{kd.kind} ({kd.documents:,})",
                         f"{top[0]!r} {kd.openings.top_share:.0%} [{kd.openings.sample:,}]",
                         f"{dv[1]:.2f}/{dv[2]:.2f}/{dv[3]:.2f} [{kd.distinct.sample:,}]",
                         f"{kd.near_duplicates.rate:.1%} [{kd.near_duplicates.sample:,}]")
        console.print(ours)
    else:
        console.print("diversity: no kept documents to measure")
    if s.readability:
        console.print("readability (Flesch-Kincaid grade) per audience: " + ", ".join(
            f"{a} {r.grade:.1f} [{r.sample}]" for a, r in s.readability.items()))

    usage = m.get("usage") or {}
    if usage:
        cost = usage.get("cost_usd")
        console.print(f"tokens: {usage.get('input_tokens', 0):,} in, "
                      f"{usage.get('output_tokens', 0):,} out · spent "
                      + (f"${cost:.4f}" if cost is not None else "unknown"))
    else:
        console.print("spend: none recorded (a curate output pays for nothing)")
