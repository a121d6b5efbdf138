"""The curation pipeline: filters -> verify -> judge -> decontaminate -> dedup -> shards.

Two passes over the corpus. Pass 1 streams records through the per-document stages and
spools survivors to a compressed temporary file while the deduplicator keeps only hashes
and MinHash digests; pass 2 streams the spool again, drops duplicates and writes the kept
records. Decontamination comes before dedup, so a contaminated document never stands for
(and takes down) a cluster of near-duplicates; a cluster's best record is ranked on its
text after verification removed failing exercises. Memory follows the number of documents
times a few hundred bytes, not their text. Every rejected record is written with its reason.
Outputs go through a ``shards.Build``: the caller's manifest switches them in whole.
"""

from __future__ import annotations

import pickle
import re
import struct
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from textbook_gen.curate.dedup import Deduplicator
from textbook_gen.curate.facts import ChunkFacts, DocumentStage, Hits, default_workers, facts_of_chunks
from textbook_gen.curate.filters import Filter, first_rejection
from textbook_gen.curate.sandbox import sandbox_layers
from textbook_gen.curate.settings import CurationSettings
from textbook_gen.curate.verify import Verdicts, verify_records
from textbook_gen.errors import InputError
from textbook_gen.shards import (
    Build,
    ShardInfo,
    Source,
    input_sources,
    is_url,
    iter_records,
    source_name,
    writing,
)
from textbook_gen.tokens import count_tokens

if TYPE_CHECKING:
    from textbook_gen.curate.judge import JudgeScore

Record = dict[str, Any]
Judge = Callable[[list[Record]], Mapping[str, "JudgeScore | float | None"]]
Progress = Callable[[str, int, int], None]
CHUNK = 512
STAGES = ("filters", "verify", "judge", "select", "decontaminate", "dedup", "quota")


def kept_diversity(root: Path, shards: Iterable[ShardInfo]) -> dict[str, Any]:
    """The diversity figures of a build's kept shards (read before the manifest lists them),
    per kind, for its manifest: what ``stats --json`` gives."""
    import random

    from textbook_gen import measures

    rng = random.Random(0)
    by_kind: dict[str, measures.Reservoir[str]] = defaultdict(
        lambda: measures.Reservoir(measures.SAMPLE, rng))
    for shard in shards:
        for r in iter_records(Path(root) / shard.name):
            by_kind[str(r.get("kind") or "-")].add(measures.model_text(r))
    return measures.diversity_json(by_kind)


def reason_kind(reason: str) -> str:
    """What a rejection counts as: "too_short (12 < 50 tokens)" and "near_duplicate of d7"
    count as too_short and near_duplicate (``stats`` and the manifest count alike)."""
    return reason.split(" (")[0].split(" of ")[0]


@dataclass(frozen=True)
class LoopCuration:
    """What the closed loop (textbook_gen/loop.py) asks of curation: a quota of kept records
    per cell (``provenance.loop.target``), survivors counted per cell, and with
    ``revise_below`` the best judged record of every sample that scored under it (the loop
    sends it back for revision).

    Records name their sample and cell in ``provenance.loop``; the records of one sample come
    together (candidates, then revisions), and the samples of one cell too."""

    revise_below: float | None = None
    # verdicts of the exercises checked in earlier rounds: each text's exercises run once
    verified: Verdicts = field(default_factory=dict, compare=False)
    # the judge's requests sent in earlier rounds: one that failed is not sent again by this
    # command (its failure stands; a rerun tries it again)
    judged: set[str] = field(default_factory=set, compare=False)


@dataclass(frozen=True)
class Best:
    """The best judged record of a sample that scored under ``revise.below``."""

    record_id: str
    score: float
    critique: str
    cell: str
    n: int


def loop_of(r: Record) -> dict[str, Any]:
    """A record's place in the closed loop (``provenance.loop``), or {} outside it."""
    loop = (r.get("provenance") or {}).get("loop")
    return loop if isinstance(loop, dict) else {}


def group_key(r: Record) -> str:
    """The sample a record answers: its candidates and revisions are chosen among together."""
    return str(loop_of(r).get("sample") or r.get("id", ""))
# every record's quality has these keys (None where a stage did not apply), so that shards of
# one corpus share one schema
QUALITY_FIELDS = ("tokens", "verified", "judge_score", "dup_cluster", "exercises_total",
                  "exercises_passed", "exercises_removed")


@dataclass
class StageCount:
    seen: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"in": self.seen, "kept": self.kept, "dropped": dict(self.dropped)}


@dataclass
class CurationResult:
    shards: list[ShardInfo]
    rejects: list[ShardInfo]
    counts: dict[str, StageCount]
    decontamination: dict[str, dict[str, int]]
    sandbox: list[str] = field(default_factory=list)  # what confined exercise code, if any ran
    cells: dict[str, int] = field(default_factory=dict)  # loop: survivors per cell, pre-quota
    low: dict[str, Best] = field(default_factory=dict)  # loop: sample -> best, under revise.below
    phases: dict[str, float] = field(default_factory=dict)  # Ray: seconds each step took
    # curation's own jobs that failed (the judge's calls): (job id, kind, reason)
    failed: list[tuple[str, str, str]] = field(default_factory=list)

    def to_manifest(self) -> dict[str, Any]:
        out = {"stages": {k: v.to_dict() for k, v in self.counts.items()},
               "decontamination": self.decontamination,
               "kept": sum(s.records for s in self.shards),
               "rejected": sum(s.records for s in self.rejects)}
        if self.sandbox:
            out["verify_sandbox"] = self.sandbox
        if self.phases:
            out["ray_phases_s"] = {k: round(v, 2) for k, v in self.phases.items()}
        return out


class Held(list[Record]):
    """Records written to memory instead of shards."""

    def write(self, record: Record) -> None:
        self.append(record)


class _Curation:
    def __init__(self, settings: CurationSettings, build: Build | None, fmt: str, per_shard: int,
                 judge: Judge | None, progress: Progress | None, loop: LoopCuration | None,
                 extra_filters: list[Filter] | None = None, workers: int | None = None,
                 stage: DocumentStage | None = None):
        self.s = settings
        self.judge = judge if settings.judge.enabled else None
        self.progress = progress or (lambda stage, done, total: None)
        self.workers = workers or default_workers()
        self.stage = stage or DocumentStage(settings)
        self.extra_filters: list[Filter] = list(extra_filters or [])
        self.counts = {name: StageCount() for name in STAGES}
        self.loop = loop
        self.cells: dict[str, int] = {}  # loop: survivors per cell after dedup
        self.low: dict[str, Best] = {}
        self.failed: list[tuple[str, str, str]] = []  # (job id, kind, reason): judge calls
        self.cell_texts: tuple[str, list[frozenset[str]]] = ("", [])  # chosen in this cell
        # without a build (a Ray worker's share of a corpus), records are held for the caller
        self.rejects: Any = build.writer("rejects", "rejects", fmt, per_shard) if build else Held()
        self.kept: Any = (build.writer("shards", "part", fmt, per_shard, keep_empty=True)
                          if build else Held())
        d = settings.dedup
        self.dedup = Deduplicator(settings.near_dup_threshold, num_perm=d.num_perm,
                                  shingle_words=d.shingle_words, exact=d.exact, near=d.near)
        self.decontam = self.stage.decontam
        self.ids: list[str] = []  # of the survivors of pass 1, in spool order

    # -- rejection bookkeeping
    def _reject(self, record: Record, stage: str, reason: str, detail: str = "",
                chosen: str | None = None) -> None:
        self.counts[stage].dropped[reason_kind(reason)] += 1
        self.rejects.write({**record, "rejected": {"stage": stage, "reason": reason,
                                                   "detail": detail, "chosen": chosen}})

    # -- pass 1: per-document stages, survivors to the spool
    def first_pass(self, records: Iterable[Record], spool: BinaryIO) -> int:
        import zstandard

        # the spool is this process's own scratch: a chunk's survivors as one pickle in one
        # zstd frame (half the time of a JSON line per record to write, a third to read)
        compressor = zstandard.ZstdCompressor(level=3)
        done = survivors = 0
        for chunk, facts in facts_of_chunks(_chunks(records, CHUNK), self.s, self.workers,
                                            self.stage):
            kept, keys, digests = self._per_document(chunk, facts)
            self.dedup.add_signed(keys, digests, [self._rank(r) for r in kept])
            for record in kept:
                self.ids.append(str(record.get("id", survivors)))
            if kept:
                frame = compressor.compress(pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL))
                spool.write(struct.pack("<Q", len(frame)) + frame)
            survivors += len(kept)
            done += len(chunk)
            self.progress("curate", done, 0)
        return survivors

    def _per_document(self, chunk: list[Record], facts: ChunkFacts
                      ) -> tuple[list[Record], list[bytes] | None, np.ndarray | None]:
        """The chunk's survivors of every per-document stage, with their dedup signatures.
        ``facts`` (computed here or in a worker process) give token counts, default filter
        verdicts, decontamination hits and signatures; the stages that need this process's
        state (extra filters, the sandbox, the judge, selection) run here."""
        out = []
        c = self.counts["filters"]
        signed: dict[int, tuple[str, bytes | None, np.ndarray | None, Hits]] = {}
        passing = 0
        for record, tokens, reason in zip(chunk, facts.tokens, facts.reasons, strict=True):
            if not isinstance(record.get("quality"), dict):
                record["quality"] = {}
            q = record["quality"]
            for key in QUALITY_FIELDS:
                q.setdefault(key, None)  # every record has the same quality fields
            q["tokens"] = tokens
            c.seen += 1
            if reason is None:
                signed[id(record)] = (record.get("text", ""), *facts.of(passing))
                passing += 1
                reason = self._extra_reason(record)
            if reason is not None:
                self._reject(record, "filters", reason)
                continue
            c.kept += 1
            out.append(record)
        if self.s.verify_code:
            out = self._verify(out)
        if self.judge is not None:
            out = self._judge(out)
        out = self._select(out)
        return self._decontaminate(out, signed)

    def _extra_reason(self, record: Record) -> str | None:
        return first_rejection(self.extra_filters, record)

    def _decontaminate(self, records: list[Record],
                       signed: dict[int, tuple[str, bytes | None, np.ndarray | None, Hits]]
                       ) -> tuple[list[Record], list[bytes] | None, np.ndarray | None]:
        c = self.counts["decontaminate"]
        out: list[Record] = []
        keys: list[Any] = []  # bytes where exact dedup is on
        digests: list[Any] = []  # rows where near dedup is on
        for r in records:
            c.seen += 1
            text, key, digest, hits = signed[id(r)]
            if r.get("text", "") is not text:  # verification removed exercises: sign anew
                new_keys, new_digests, new_hits = self.stage.signed([r.get("text", "")])
                key = new_keys[0] if new_keys is not None else None
                digest = new_digests[0] if new_digests is not None else None
                hits = new_hits[0]
            if hits:
                names = self.decontam.count(hits)
                self._reject(r, "decontaminate", f"contaminated ({', '.join(names)})",
                             self.decontam.explain(r.get("text", ""), hits))
                continue
            c.kept += 1
            out.append(r)
            keys.append(key)
            digests.append(digest)
        d = self.s.dedup
        return (out, keys if d.exact else None,
                (np.stack(digests) if digests else np.zeros((0, d.num_perm), np.uint32))
                if d.near else None)

    def _verify(self, records: list[Record]) -> list[Record]:
        c = self.counts["verify"]
        checkable = [r for r in records if "```" in r.get("text", "")]
        memo = self.loop.verified if self.loop is not None else None
        verdicts = dict(zip((id(r) for r in checkable),
                            verify_records(checkable, self.s.verify, memo), strict=True))
        out = []
        for r in records:
            c.seen += 1
            v = verdicts.get(id(r))
            q = r["quality"]
            if v is None:
                q.setdefault("verified", None)
            elif not v.keep:
                q.update(verified=False, exercises_total=v.total, exercises_passed=v.passed)
                self._reject(r, "verify", f"{v.reason} ({v.total - v.passed} of {v.total})",
                             "\n\n".join(v.failures)[:4000])
                continue
            else:
                q.update(verified=True, exercises_total=v.total, exercises_passed=v.passed)
                if v.text != r["text"]:
                    q["exercises_removed"] = v.total - v.passed
                    r["text"] = v.text
                    if self.s.count_tokens:  # what is kept is what dedup ranks
                        q["tokens"] = count_tokens(v.text)
            c.kept += 1
            out.append(r)
        return out

    def _judge(self, records: list[Record]) -> list[Record]:
        from textbook_gen.curate.judge import JudgeScore

        c = self.counts["judge"]
        scores = self.judge(records) if records and self.judge else {}
        out = []
        below = self.loop.revise_below if self.loop is not None else None
        for r in records:
            c.seen += 1
            v = scores.get(r.get("id", ""))
            verdict = v if isinstance(v, JudgeScore) else JudgeScore(v)
            score = verdict.score
            r["quality"]["judge_score"] = score
            if below is not None and score is not None:
                self._note_best(r, verdict)
            if score is None and verdict.missing == "budget":
                self._reject(r, "judge", "judge_unpaid", "the budget ran out before the judge"
                             " read it; run again with a higher --max-cost to judge it")
            elif score is None and verdict.missing == "failed":
                # the judge's job failed: a failed job of the run (exit 5), retried by a rerun
                self.failed.append((f"judge:{r.get('id', '')}", "judge_failed", verdict.error))
                self._reject(r, "judge", "judge_failed", verdict.error)
            elif score is None:
                self._reject(r, "judge", "judge_unscored", "the judge's answer had no score")
            elif score < self.s.judge.min_score:
                self._reject(r, "judge", f"judge_score ({score} < {self.s.judge.min_score})",
                             verdict.critique)
            else:
                c.kept += 1
                out.append(r)
        if below is not None:  # a sample's best under the bar goes back for revision
            for key in {group_key(r) for r in records}:
                best = self.low.get(key)
                if best is not None and best.score >= below:
                    del self.low[key]
        return out

    def _note_best(self, r: Record, verdict: Any) -> None:
        """Keep the best judged record of the sample (ties: the earlier one) as the one a
        revision would start from."""
        key = group_key(r)
        best = self.low.get(key)
        if best is None or verdict.score > best.score:
            loop = loop_of(r)
            self.low[key] = Best(str(r.get("id", "")), float(verdict.score), verdict.critique,
                                 str(loop.get("cell") or ""), int(loop.get("n") or 0))

    def _select(self, records: list[Record]) -> list[Record]:
        """Best-of-n: one record per sample survives, ranked by judge score, then verified,
        then least like what this cell already kept, then order (candidates before
        revisions, so a revision wins only by scoring higher)."""
        c = self.counts["select"]
        groups: dict[str, list[Record]] = {}
        for r in records:
            groups.setdefault(group_key(r), []).append(r)
        out = []
        for group in groups.values():
            c.seen += len(group)
            chosen = group[0]
            if len(group) > 1:
                ranked = [(self._select_rank(r), -i, r) for i, r in enumerate(group)]
                top = max(rank for rank, _, _ in ranked)
                if sum(rank == top for rank, _, _ in ranked) > 1:  # a tie: diversity decides
                    ranked = [(rank + (-self._likeness(r),), i, r) for rank, i, r in ranked]
                chosen = max(ranked, key=lambda t: (t[0], t[1]))[2]
                for r in group:
                    if r is not chosen:
                        self._reject(r, "select", "not_selected",
                                     f"another answer to the same prompt ranked higher:"
                                     f" {chosen.get('id')}", chosen=str(chosen.get("id")))
            if loop_of(chosen):
                self._remember(chosen)
            c.kept += 1
            out.append(chosen)
        return out

    @staticmethod
    def _select_rank(r: Record) -> tuple[float, ...]:
        q = r["quality"]
        score = q.get("judge_score")
        return (score if score is not None else -1.0, 1.0 if q.get("verified") else 0.0)

    def _likeness(self, r: Record) -> float:
        """Highest Jaccard similarity (word 5-grams) to a record this cell already chose."""
        cell = str(loop_of(r).get("cell") or "")
        if self.cell_texts[0] != cell:
            return 0.0
        mine = _shingles(r.get("text", ""))
        return max((len(mine & o) / len(mine | o) for o in self.cell_texts[1] if mine | o),
                   default=0.0)

    def _remember(self, r: Record) -> None:
        cell = str(loop_of(r).get("cell") or "")
        if self.cell_texts[0] != cell:  # records come cell by cell: keep only this cell's
            self.cell_texts = (cell, [])
        self.cell_texts[1].append(_shingles(r.get("text", "")))

    @staticmethod
    def _rank(r: Record) -> tuple[float, ...]:
        q = r.get("quality") or {}
        score = q.get("judge_score")
        return (score if score is not None else -1.0, 1.0 if q.get("verified") else 0.0,
                float(q.get("tokens") or len(r.get("text", ""))))

    # -- between the passes: duplicates
    def find_duplicates(self, spool_path: Path) -> tuple[dict[int, Any], dict[int, int]]:
        pairs = self.dedup.candidates()

        def texts(indexes: list[int]) -> Iterator[tuple[int, str]]:
            wanted = set(indexes)
            for i, record in enumerate(_read_spool(spool_path)):
                if i in wanted:
                    yield i, record.get("text", "")

        dropped, sizes = self.dedup.finish(pairs, texts)
        return {d.index: d for d in dropped}, sizes

    # -- pass 2: duplicates out, the rest to shards
    def second_pass(self, spool_path: Path, total: int, dropped: dict[int, Any],
                    sizes: dict[int, int]) -> None:
        dd = self.counts["dedup"]
        for i, record in enumerate(_read_spool(spool_path)):
            dd.seen += 1
            dup = dropped.get(i)
            if dup is not None:
                self._reject(record, "dedup",
                             f"{'exact' if dup.exact else 'near'}_duplicate of {self.ids[dup.kept]}")
                continue
            dd.kept += 1
            if i in sizes:
                record["quality"]["dup_cluster"] = f"{record.get('id', i)}~{sizes[i]}"
            if self.loop is not None and not self._within_quota(record):
                continue
            self.kept.write(record)
            self.progress("write", i + 1, total)

    def _within_quota(self, record: Record) -> bool:
        """A cell keeps at most its target: survivors past it (samples that were in flight
        together) are rejected as ``over_target`` and stay in the store for a higher target."""
        assert self.loop is not None
        c = self.counts["quota"]
        c.seen += 1
        loop = loop_of(record)
        cell = str(loop.get("cell") or "")
        have = self.cells[cell] = self.cells.get(cell, 0) + 1
        target = loop.get("target")
        if target is not None and have > target:
            self._reject(record, "quota", "over_target",
                         f"its cell already has its {target} kept document(s)")
            return False
        c.kept += 1
        return True


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    """Chunks of about ``size`` records that never split the records of one sample."""
    chunk: list[Record] = []
    for r in records:
        if len(chunk) >= size and group_key(r) != group_key(chunk[-1]):
            yield chunk
            chunk = []
        chunk.append(r)
    if chunk:
        yield chunk


def _shingles(text: str, k: int = 5) -> frozenset[str]:
    words = text.lower().split()
    return frozenset(" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1)))


def _read_spool(path: Path) -> Iterator[Record]:
    import zstandard

    d = zstandard.ZstdDecompressor()
    with open(path, "rb") as f:
        while header := f.read(8):
            (size,) = struct.unpack("<Q", header)
            yield from pickle.loads(d.decompress(f.read(size)))


def curate(records: Iterable[Record], settings: CurationSettings, build: Build, *,
           fmt: str = "parquet", shard_max_records: int = 10_000, judge: Judge | None = None,
           progress: Progress | None = None, loop: LoopCuration | None = None,
           extra_filters: list[Filter] | None = None, workers: int | None = None
           ) -> CurationResult:
    """Run every enabled stage; write kept records to shards/ and rejected ones to rejects/
    of ``build`` (the caller commits it with its manifest).

    With ``settings.enabled`` false every record is kept (``quality.tokens`` is still filled).
    ``workers`` processes (default: every core) compute the per-document facts; the result
    does not depend on their number.
    """
    if not settings.enabled:
        settings = settings.all_stages_off()
    c = _Curation(settings, build, fmt, shard_max_records, judge, progress, loop, extra_filters,
                  workers)
    spool_path = build.temp_path("curate-spool.jsonl.zst")
    try:
        with writing(spool_path), open(spool_path, "wb") as spool:
            total = c.first_pass(records, spool)
        dropped, sizes = c.find_duplicates(spool_path)
        c.second_pass(spool_path, total, dropped, sizes)
    finally:
        spool_path.unlink(missing_ok=True)
    sandbox = (sandbox_layers(settings.verify)
               if c.counts["verify"].seen and settings.verify_code else [])
    return CurationResult(c.kept.close(), c.rejects.close(), c.counts, c.decontam.report(),
                          sandbox, c.cells, c.low, failed=c.failed)


SUFFIXED = re.compile(r"#\d+$")  # the only ids UniqueIds can give to a repeated one


class UniqueIds:
    """Input ids made unique, in document order: an id seen before (given in the input, or
    given here to an earlier document) becomes ``id#k``, the smallest k >= 2 not yet taken.
    Ids ``a, a, a`` give ``a, a#2, a#3``; ``a, a, a#2`` give ``a, a#2, a#2#2``. The one rule
    for one process (``_with_ids``) and for Ray (``distributed._renames``), which feeds it only
    the documents whose ids are repeated or end like a suffix (``SUFFIXED``): the others keep
    their ids, and the rule's decisions on these depend only on each other."""

    def __init__(self) -> None:
        self.taken: set[str] = set()
        self.next: dict[str, int] = {}

    def __call__(self, rid: str) -> str:
        if rid not in self.taken:
            self.taken.add(rid)
            return rid
        k = self.next.get(rid, 2)
        while f"{rid}#{k}" in self.taken:  # taken names stay taken: k only grows
            k += 1
        self.next[rid] = k + 1
        new = f"{rid}#{k}"
        self.taken.add(new)
        return new


def _with_ids(paths: list[Source]) -> Iterator[Record]:
    unique = UniqueIds()
    for path in paths:
        for n, record in enumerate(iter_records(path), 1):
            if "text" not in record or not isinstance(record["text"], str):
                raise InputError(f"{path}: record {n} has no 'text' string field; "
                                 "each record needs one")
            record["id"] = unique(str(record.get("id") or f"{source_name(path)}:{n}"))
            yield record


def curate_corpus(inputs: Sequence[str | Path], out_dir: str | Path, settings: CurationSettings, *,
                  fmt: str = "parquet", shard_max_records: int = 10_000,
                  progress: Progress | None = None, workers: int | None = None,
                  ray: str | None = None, quiet: bool = False) -> CurationResult:
    """``textbook-gen curate``: the same stages on any JSONL/Parquet corpus (no judge). With
    ``ray`` (a cluster address, ``auto`` or ``local``) on a Ray cluster, ``workers`` actors
    (curate/distributed.py), keeping the same records. An input is a local path or a URL
    fsspec reads (``shards.input_sources``: ``s3://bucket/corpus/*.jsonl.zst``)."""
    if is_url(out_dir):
        raise InputError(f"--out {out_dir}: shards are written to a directory (local, or a mount "
                         "every Ray node shares), not to a URL; write them there, then copy "
                         "the directory to object storage (manifest.json last)")
    sources = input_sources(inputs)
    build = Build(Path(out_dir))
    settings = settings.without_judge()  # no run store or budget here to pay a judge from
    if ray is not None:
        from textbook_gen.curate.distributed import curate_on_ray

        result = curate_on_ray(sources, build, settings, fmt=fmt,
                               shard_max_records=shard_max_records, address=ray,
                               workers=workers, quiet=quiet)
    else:
        result = curate(_with_ids(sources), settings, build, fmt=fmt,
                        shard_max_records=shard_max_records, progress=progress, workers=workers)
    build.commit({
        "inputs": [str(p) for p in sources],
        "settings": settings.model_dump(mode="json"),
        "curation": result.to_manifest(),
        "diversity": kept_diversity(build.root, result.shards),
        "shards": [s.to_dict() for s in [*result.shards, *result.rejects]],
    })
    return result
