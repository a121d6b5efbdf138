"""Seed documents: ground each job's prompt in a real text (Cosmopedia's web extracts, Phi-4's
seeds), and say in provenance which one.

The seed file (JSONL, plain or zstd, Parquet, or a folder of .txt/.md files) is read once,
streaming, into a SQLite FTS5 index beside the run (``seeds-<hash>.sqlite``); the index is
keyed by the file's content and the settings that shape it, so it is built once and reused.
FTS5 is SQLite's full-text engine and ranks with BM25 (its ``bm25()``); the index lives on
disk, so memory stays flat whatever the size of the seed file (``bench/bench_seeds.py``).
In-memory BM25 libraries (rank_bm25, bm25s) hold the whole corpus or its index in RAM.

A job draws its seed deterministically from its own seed: with ``match: topic`` among the
``top`` best BM25 matches of its topic, subject and notes; with ``match: random`` from the
whole file. The same spec and seed file give the same draw in any process.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textbook_gen.errors import InputError
from textbook_gen.expand import draw_seed

if TYPE_CHECKING:
    from textbook_gen.expand import Job
    from textbook_gen.spec import SeedSettings

INDEX_VERSION = 1
BATCH = 2_000
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOP = frozenset({
    "a", "an", "and", "the", "of", "in", "on", "to", "for", "with", "by", "as", "at", "or",
    "is", "are", "be", "from", "into", "its"
})


@dataclass(frozen=True)
class SeedDocument:
    """What a template sees as ``seed_document`` (text cut to ``max_chars``)."""

    id: str
    text: str
    source: str
    sha256: str  # of the whole text

    def as_template(self) -> dict[str, str]:
        return {"id": self.id, "text": self.text, "source": self.source, "sha256": self.sha256}

    def provenance(self) -> dict[str, str]:
        return {"id": self.id, "sha256": self.sha256, "source": self.source}


def _text_files(folder: Path) -> list[Path]:
    """The seed documents of a folder: its .txt and .md files, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.suffix in (".txt", ".md"))


def _file_digest(path: Path) -> str:
    from textbook_gen.shards import sha256_file

    h = hashlib.sha256()
    for f in _text_files(path) if path.is_dir() else [path]:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        sha256_file(f, h)
    return h.hexdigest()


def _read(path: Path, settings: SeedSettings) -> Iterator[tuple[str, str]]:
    """(id, text) of every seed document, streaming."""
    if path.is_dir():
        for f in _text_files(path):
            try:
                yield str(f.relative_to(path)), f.read_text("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{f}: not UTF-8 text; save it as UTF-8") from None
        return
    from textbook_gen.shards import iter_records

    for n, record in enumerate(iter_records(path), 1):
        text = record.get(settings.text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise InputError(f"{path}: record {n} has no {settings.text_field!r} text field"
                             " (seeds.text_field names it)")
        rid = record.get(settings.id_field) if settings.id_field else None
        yield (str(rid) if rid not in (None, "") else f"{path.name}:{n}"), text


class SeedIndex:
    """The seed file's FTS5 index; ``for_job`` draws a job's seed document."""

    def __init__(self, settings: SeedSettings, base_dir: Path, index_dir: Path):
        self.settings = settings
        self.path = (base_dir / settings.path).resolve()
        if not self.path.exists():
            raise InputError(f"seeds.path: {self.path} does not exist (it is relative to the"
                             " spec file)")
        self.source = settings.path
        shape = json.dumps([INDEX_VERSION, settings.text_field, settings.id_field,
                            settings.max_chars])
        key = hashlib.sha256((_file_digest(self.path) + shape).encode()).hexdigest()[:16]
        self.index_path = Path(index_dir) / f"seeds-{key}.sqlite"
        if not self.index_path.exists():
            self._build()
        self.db = sqlite3.connect(f"file:{self.index_path}?mode=ro", uri=True,
                                  check_same_thread=False)
        self.count = int(self.db.execute("SELECT value FROM meta WHERE key='count'").fetchone()[0])
        if self.count == 0:
            raise InputError(f"seeds.path: {self.path} holds no documents")
        self._matches = lru_cache(maxsize=4096)(self._top)

    def _build(self) -> None:
        """Stream the seed file into a new index, written aside and renamed into place."""
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_suffix(f".building-{os.getpid()}")  # plan and run may race
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp)
        try:
            db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
                "CREATE TABLE docs (rowid INTEGER PRIMARY KEY, sid TEXT, sha256 TEXT, text TEXT);"
                "CREATE VIRTUAL TABLE fts USING fts5(text, content='docs', content_rowid='rowid',"
                " tokenize='porter unicode61');")
            count = 0
            batch: list[tuple[int, str, str, str]] = []
            for sid, text in _read(self.path, self.settings):
                count += 1
                digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
                batch.append((count, sid, digest, text[: self.settings.max_chars]))
                if len(batch) >= BATCH:
                    self._insert(db, batch)
                    batch = []
            self._insert(db, batch)
            db.execute("INSERT INTO meta VALUES ('count', ?)", (str(count),))
            db.commit()
        finally:
            db.close()
        tmp.replace(self.index_path)

    @staticmethod
    def _insert(db: sqlite3.Connection, batch: list[tuple[int, str, str, str]]) -> None:
        db.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", batch)
        db.executemany("INSERT INTO fts (rowid, text) VALUES (?, ?)",
                       [(r[0], r[3]) for r in batch])

    def _top(self, query: str) -> tuple[int, ...]:
        """Rowids of the ``top`` best BM25 matches of ``query`` (ties by rowid)."""
        words = [w for w in dict.fromkeys(_WORD.findall(query.lower())) if w not in STOP]
        if not words:
            return ()
        match = " OR ".join(f'"{w}"' for w in words)
        rows = self.db.execute("SELECT rowid FROM fts WHERE fts MATCH ? ORDER BY rank, rowid"
                               " LIMIT ?", (match, self.settings.top)).fetchall()
        return tuple(r[0] for r in rows)

    def _doc(self, rowid: int) -> SeedDocument:
        sid, digest, text = self.db.execute("SELECT sid, sha256, text FROM docs WHERE rowid=?",
                                            (rowid,)).fetchone()
        return SeedDocument(sid, text, self.source, digest)

    def for_job(self, job: Job) -> SeedDocument:
        rng = random.Random(draw_seed(job.sample_seed) ^ 0x5EED5)  # candidates and revisions share it
        if self.settings.match == "topic":
            found = self._matches(" ".join((job.topic, job.subject, job.topic_notes)))
            if found:
                return self._doc(rng.choice(found))
        return self._doc(rng.randrange(self.count) + 1)

    def text_of(self, sid: str) -> str | None:
        row = self.db.execute("SELECT text FROM docs WHERE sid=? LIMIT 1", (sid,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.db.close()


# ------------------------------------------------------------------------------ copy guard


def ngram_overlap(document: str, seed: str, n: int) -> float:
    """Share of the document's word n-grams that occur in the seed."""
    doc = [w.lower() for w in _WORD.findall(document)]
    src = [w.lower() for w in _WORD.findall(seed)]
    grams = [tuple(doc[i:i + n]) for i in range(len(doc) - n + 1)]
    if not grams:
        return 0.0
    seen = {tuple(src[i:i + n]) for i in range(len(src) - n + 1)}
    return sum(g in seen for g in grams) / len(grams)


class CopyGuard:
    """The curation filter that rejects a document copying its seed (``copies_seed``)."""

    name = "copies_seed"

    def __init__(self, index: SeedIndex, ngram: int, max_overlap: float):
        self.index, self.ngram, self.max_overlap = index, ngram, max_overlap

    def filter(self, record: dict[str, Any]) -> bool | tuple[bool, str]:
        seed = (record.get("provenance") or {}).get("seed_document")
        if not isinstance(seed, dict) or not seed.get("id"):
            return True
        text = self.index.text_of(str(seed["id"]))
        if not text:
            return True
        share = ngram_overlap(str(record.get("text", "")), text, self.ngram)
        if share > self.max_overlap:
            return False, (f"copies_seed ({share:.0%} of its {self.ngram}-grams are in seed"
                           f" {seed['id']})")
        return True
