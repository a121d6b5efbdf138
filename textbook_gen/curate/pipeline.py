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

import io
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from textbook_gen.curate.decontam import Decontaminator
from textbook_gen.curate.dedup import Deduplicator
from textbook_gen.curate.filters import Filter, default_filters
from textbook_gen.curate.sandbox import sandbox_layers
from textbook_gen.curate.settings import CurationSettings
from textbook_gen.curate.verify import verify_records
from textbook_gen.shards import Build, ShardInfo, dumps, iter_records
from textbook_gen.tokens import count_tokens

Record = dict[str, Any]
Judge = Callable[[list[Record]], dict[str, float | None]]
Progress = Callable[[str, int, int], None]
CHUNK = 512
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

    def to_manifest(self) -> dict[str, Any]:
        out = {"stages": {k: v.to_dict() for k, v in self.counts.items()},
               "decontamination": self.decontamination,
               "kept": sum(s.records for s in self.shards),
               "rejected": sum(s.records for s in self.rejects)}
        if self.sandbox:
            out["verify_sandbox"] = self.sandbox
        return out


class _Curation:
    def __init__(self, settings: CurationSettings, build: Build, fmt: str, per_shard: int,
                 judge: Judge | None, progress: Progress | None):
        self.s = settings
        self.judge = judge if settings.judge.enabled else None
        self.progress = progress or (lambda stage, done, total: None)
        self.filters: list[Filter] = default_filters(settings)
        self.counts = {name: StageCount() for name in
                       ("filters", "verify", "judge", "decontaminate", "dedup")}
        self.rejects = build.writer("rejects", "rejects", fmt, per_shard)
        self.kept = build.writer("shards", "part", fmt, per_shard, keep_empty=True)
        d = settings.dedup
        self.dedup = Deduplicator(settings.near_dup_threshold, num_perm=d.num_perm,
                                  shingle_words=d.shingle_words, exact=d.exact, near=d.near)
        self.decontam = Decontaminator(settings.decontaminate, settings.decontam_ngram)
        self.ids: list[str] = []  # of the survivors of pass 1, in spool order

    # -- rejection bookkeeping
    def _reject(self, record: Record, stage: str, reason: str, detail: str = "") -> None:
        self.counts[stage].dropped[reason.split(" (")[0]] += 1
        self.rejects.write({**record, "rejected": {"stage": stage, "reason": reason,
                                                   "detail": detail}})

    # -- pass 1: per-document stages, survivors to the spool
    def first_pass(self, records: Iterable[Record], spool: io.BufferedWriter) -> int:
        import zstandard

        writer = zstandard.ZstdCompressor(level=3).stream_writer(spool, closefd=False)
        done = survivors = 0
        it = iter(records)
        while chunk := list(islice(it, CHUNK)):
            for record in self._per_document(chunk):
                self.dedup.add(record.get("text", ""), self._rank(record))
                self.ids.append(str(record.get("id", survivors)))
                writer.write((dumps(record) + "\n").encode("utf-8"))
                survivors += 1
            done += len(chunk)
            self.progress("curate", done, 0)
        writer.close()
        return survivors

    def _per_document(self, chunk: list[Record]) -> list[Record]:
        out = []
        c = self.counts["filters"]
        for record in chunk:
            if not isinstance(record.get("quality"), dict):
                record["quality"] = {}
            q = record["quality"]
            for key in QUALITY_FIELDS:
                q.setdefault(key, None)  # every record has the same quality fields
            c.seen += 1
            for f in self.filters:
                verdict = f.filter(record)
                ok, reason = (verdict, f.name) if isinstance(verdict, bool) else verdict
                if not ok:
                    self._reject(record, "filters", reason)
                    break
            else:
                c.kept += 1
                out.append(record)
        if self.s.verify_code:
            out = self._verify(out)
        if self.judge is not None:
            out = self._judge(out)
        return self._decontaminate(out)

    def _decontaminate(self, records: list[Record]) -> list[Record]:
        c = self.counts["decontaminate"]
        out = []
        for r in records:
            c.seen += 1
            hits = self.decontam.check(r.get("text", ""))
            if hits:
                self._reject(r, "decontaminate", f"contaminated ({', '.join(hits)})")
                continue
            c.kept += 1
            out.append(r)
        return out

    def _verify(self, records: list[Record]) -> list[Record]:
        c = self.counts["verify"]
        checkable = [r for r in records if "```" in r.get("text", "")]
        verdicts = dict(zip((id(r) for r in checkable), verify_records(checkable, self.s.verify),
                            strict=True))
        out = []
        for r in records:
            c.seen += 1
            v = verdicts.get(id(r))
            q = r["quality"]
            if v is None:
                q.setdefault("verified", None)
            elif not v.keep:
                q.update(verified=False, exercises_total=v.total, exercises_passed=v.passed)
                self._reject(r, "verify", f"exercise_failed ({v.total - v.passed} of {v.total})",
                             "\n\n".join(v.failures)[:4000])
                continue
            else:
                q.update(verified=True, exercises_total=v.total, exercises_passed=v.passed)
                if v.text != r["text"]:
                    q["exercises_removed"] = v.total - v.passed
                    r["text"] = v.text
                    q["tokens"] = count_tokens(v.text)  # what is kept is what dedup ranks
            c.kept += 1
            out.append(r)
        return out

    def _judge(self, records: list[Record]) -> list[Record]:
        c = self.counts["judge"]
        scores = self.judge(records) if records and self.judge else {}
        out = []
        for r in records:
            c.seen += 1
            score = scores.get(r.get("id", ""))
            r["quality"]["judge_score"] = score
            if score is None:
                self._reject(r, "judge", "judge_unscored", "the judge's answer had no score")
            elif score < self.s.judge.min_score:
                self._reject(r, "judge", f"judge_score ({score} < {self.s.judge.min_score})")
            else:
                c.kept += 1
                out.append(r)
        return out

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
            self.kept.write(record)
            self.progress("write", i + 1, total)


def _read_spool(path: Path) -> Iterator[Record]:
    import zstandard

    with open(path, "rb") as f:
        reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        for line in reader:
            yield json.loads(line)


def curate(records: Iterable[Record], settings: CurationSettings, build: Build, *,
           fmt: str = "parquet", shard_max_records: int = 10_000, judge: Judge | None = None,
           progress: Progress | None = None) -> CurationResult:
    """Run every enabled stage; write kept records to shards/ and rejected ones to rejects/
    of ``build`` (the caller commits it with its manifest).

    With ``settings.enabled`` false every record is kept (``quality.tokens`` is still filled).
    """
    if not settings.enabled:
        settings = settings.all_stages_off()
    c = _Curation(settings, build, fmt, shard_max_records, judge, progress)
    spool_path = build.temp_path("curate-spool.jsonl.zst")
    try:
        with open(spool_path, "wb") as spool:
            total = c.first_pass(records, spool)
        dropped, sizes = c.find_duplicates(spool_path)
        c.second_pass(spool_path, total, dropped, sizes)
    finally:
        spool_path.unlink(missing_ok=True)
    sandbox = (sandbox_layers(settings.verify)
               if c.counts["verify"].seen and settings.verify_code else [])
    return CurationResult(c.kept.close(), c.rejects.close(), c.counts, c.decontam.report(), sandbox)


def _with_ids(paths: list[Path]) -> Iterator[Record]:
    seen: defaultdict[str, int] = defaultdict(int)
    for path in paths:
        for n, record in enumerate(iter_records(path), 1):
            if "text" not in record or not isinstance(record["text"], str):
                from textbook_gen.errors import TextbookGenError

                raise TextbookGenError(f"{path}: record {n} has no 'text' string field; "
                                       "each record needs one")
            rid = str(record.get("id") or f"{path.name}:{n}")
            seen[rid] += 1
            record["id"] = rid if seen[rid] == 1 else f"{rid}#{seen[rid]}"
            yield record


def curate_corpus(inputs: list[Path], out_dir: Path, settings: CurationSettings, *,
                  fmt: str = "parquet", shard_max_records: int = 10_000,
                  progress: Progress | None = None) -> CurationResult:
    """``textbook-gen curate``: the same stages on any JSONL/Parquet corpus (no judge)."""
    build = Build(Path(out_dir))
    result = curate(_with_ids([Path(p) for p in inputs]), settings, build, fmt=fmt,
                    shard_max_records=shard_max_records, progress=progress)
    build.commit({
        "inputs": [str(p) for p in inputs],
        "settings": settings.model_dump(mode="json"),
        "curation": result.to_manifest(),
        "shards": [s.to_dict() for s in [*result.shards, *result.rejects]],
    })
    return result
