"""Decontamination: drop documents that share a word n-gram (13 by default, as in the GPT-3
and phi-1 reports) with any item of a benchmark the user names; count hits per benchmark,
and say for each document removed which item it matched and the n-gram they share, so a
reviewer can check it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textbook_gen.curate.dedup import ngram_hashes, shingle_hashes, word_hashes, word_spans
from textbook_gen.curate.settings import Benchmark
from textbook_gen.errors import ConfigError, TextbookGenError


@dataclass
class BenchmarkIndex:
    name: str
    grams: np.ndarray  # sorted n-gram hashes
    items: np.ndarray  # the benchmark item each n-gram came from
    indexed: int  # items long enough to hold an n-gram
    skipped: int  # items shorter than n words
    labels: list[str] = field(default_factory=list)  # each item as a reviewer finds it
    hit_documents: int = 0
    hit_items: set[int] = field(default_factory=set)


ID_FIELDS = ("id", "task_id", "question_id", "problem_id", "idx", "uid")  # an item's own name


def benchmark_items(b: Benchmark) -> Iterator[tuple[str, str]]:
    """A benchmark's items as (label, text): the label says where a reviewer finds the item
    (its id field, or its record or line number)."""
    path = Path(b.path)
    if not path.is_file():
        raise ConfigError(f"decontaminate: benchmark file {path} does not exist (paths are "
                          "relative to the spec file)")
    name = path.name
    if name.endswith((".jsonl", ".jsonl.zst", ".json.zst", ".parquet")):
        from textbook_gen.shards import iter_records

        try:
            for n, record in enumerate(iter_records(path), 1):
                found = next((str(record[k]) for k in ID_FIELDS
                              if isinstance(record.get(k), str | int)), None)
                label = f"{found} (record {n})" if found is not None else f"record {n}"
                if b.field is not None:
                    if b.field not in record:
                        raise ConfigError(f"decontaminate: {path} has a record without the "
                                          f"field {b.field!r}; fields seen: {', '.join(record)}")
                    yield label, str(record[b.field])
                else:
                    yield label, "\n".join(v for v in record.values() if isinstance(v, str))
        except TextbookGenError as e:
            raise ConfigError(f"decontaminate: {e}") from None
    else:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if b"\0" in raw:
                    raise ConfigError(f"decontaminate: {path}:{lineno}: binary data, not text; give"
                                      " a text file (one item per line), JSONL or Parquet")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ConfigError(f"decontaminate: {path}:{lineno}: not UTF-8 text; save the"
                                      " benchmark file as UTF-8") from None
                if line.strip():
                    yield f"line {lineno}", line


class Decontaminator:
    def __init__(self, benchmarks: list[Benchmark], n: int = 13):
        self.n = n
        self.indexes = [self._index(b) for b in benchmarks]

    def _index(self, b: Benchmark) -> BenchmarkIndex:
        grams, items, skipped, indexed = [], [], 0, 0
        labels: list[str] = []
        for i, (label, text) in enumerate(benchmark_items(b)):
            labels.append(label)
            words = word_hashes(text)
            if len(words) < self.n:
                skipped += 1
                continue
            g = shingle_hashes(words, self.n)
            grams.append(g)
            items.append(np.full(len(g), i, dtype=np.int64))
            indexed += 1
        all_grams = np.concatenate(grams) if grams else np.zeros(0, np.uint64)
        all_items = np.concatenate(items) if items else np.zeros(0, np.int64)
        order = np.argsort(all_grams, kind="stable")
        return BenchmarkIndex(Path(b.path).name, all_grams[order], all_items[order], indexed,
                              skipped, labels)

    def lookup(self, text: str) -> list[tuple[int, list[int]]]:
        """The benchmarks (by position) this text shares an n-gram with, and the items hit.
        Counts nothing: a pure function, so any process can compute it."""
        words = word_hashes(text)
        if len(words) < self.n or not self.indexes:
            return []
        doc = shingle_hashes(words, self.n)
        hits = []
        for b, idx in enumerate(self.indexes):
            if len(idx.grams) == 0:
                continue
            pos = np.searchsorted(idx.grams, doc)
            pos[pos == len(idx.grams)] = 0
            found = idx.grams[pos] == doc
            if found.any():
                hits.append((b, sorted({int(x) for x in idx.items[pos[found]]})))
        return hits

    def count(self, hits: list[tuple[int, list[int]]]) -> list[str]:
        """Count a document removed for ``hits`` (from ``lookup``); the benchmarks' names."""
        for b, items in hits:
            self.indexes[b].hit_documents += 1
            self.indexes[b].hit_items.update(items)
        return [self.indexes[b].name for b, _ in hits]

    def explain(self, text: str, hits: list[tuple[int, list[int]]]) -> str:
        """What a reviewer needs to check a document removed for ``hits``: for each benchmark,
        the item of the first n-gram (in the document's order) it shares, and that n-gram as
        the document has it (lower-cased, as it was compared)."""
        low, starts, ends, words = word_spans(text)
        doc = ngram_hashes(words, self.n)
        out = []
        for b, _ in hits:
            idx = self.indexes[b]
            pos = np.searchsorted(idx.grams, doc)
            pos[pos == len(idx.grams)] = 0
            found = np.flatnonzero(idx.grams[pos] == doc)
            if not len(found):
                continue
            at = int(found[0])
            item = int(idx.items[pos[at]])
            gram = low[starts[at]:ends[at + self.n - 1]].decode("utf-8", "replace")
            label = idx.labels[item] if item < len(idx.labels) else f"item {item + 1}"
            out.append(f"{idx.name}: {label} shares the {self.n}-gram {' '.join(gram.split())!r}")
        return "\n".join(out)

    def check(self, text: str) -> list[str]:
        """Names of the benchmarks this text shares an n-gram with (and count the hit)."""
        return self.count(self.lookup(text))

    def report(self) -> dict[str, dict[str, int]]:
        return {i.name: {"documents_removed": i.hit_documents, "items_hit": len(i.hit_items),
                         "items_indexed": i.indexed, "items_too_short": i.skipped}
                for i in self.indexes}
