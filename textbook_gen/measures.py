"""Diversity measures of a corpus: pure functions over an iterable of texts.

Model collapse shows as text that all sounds alike; these figures make it visible. Each takes
texts and returns a small frozen result that names its sample size. Where a measure holds the
texts (distinct-n, compression, self-repetition, near-duplicates, readability) it reads a
seeded reservoir sample of at most ``sample`` texts, so memory stays bounded whatever the
corpus size; openings count every text (a few words each). The live watch, ``stats`` and
``report`` call the same functions.

Definitions follow Shaib et al. 2024, "Standardizing the measurement of text diversity":
distinct-n is unique n-grams over all n-grams; the compression ratio is raw bytes over gzip
bytes (higher: more repetitive); self-repetition is the mean over documents of
log(1 + the number of other documents sharing each of its 4-grams).
"""

from __future__ import annotations

import gzip
import math
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from textbook_gen.curate.dedup import Deduplicator, ngram_hashes, word_hashes
from textbook_gen.curate.filters import prose

T = TypeVar("T")
SAMPLE = 2_000  # texts held by the sampled measures
READABILITY_SAMPLE = 300  # syllable counting is slow; a mean grade settles long before 2,000
_WORD = re.compile(r"[\w'-]+")


class Reservoir(Generic[T]):
    """A uniform sample of at most ``size`` items of a stream fed one at a time (Algorithm R);
    ``seen`` counts every item offered."""

    def __init__(self, size: int = SAMPLE, rng: random.Random | None = None):
        self.size, self.seen = size, 0
        self.items: list[T] = []
        self.rng = rng or random.Random(0)

    def add(self, item: T) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        elif (j := self.rng.randrange(self.seen)) < self.size:
            self.items[j] = item


def reservoir(items: Iterable[T], size: int = SAMPLE, seed: int = 0) -> list[T]:
    """A uniform sample of at most ``size`` items, read in one pass."""
    r: Reservoir[T] = Reservoir(size, random.Random(seed))
    for item in items:
        r.add(item)
    return r.items


def model_text(record: dict[str, Any]) -> str:
    """What the model wrote: a record's text without the answer start its template wrote
    (``provenance.answer_start_chars``), which says nothing of the model's diversity."""
    text = str(record.get("text", ""))
    start = (record.get("provenance") or {}).get("answer_start_chars") or 0
    return text[start:] if isinstance(start, int) else text


# ----------------------------------------------------------------------------- openings


@dataclass(frozen=True)
class Openings:
    words: int
    sample: int  # texts counted (all of them)
    top: list[tuple[str, int]]  # the most common openings with their counts

    @property
    def top_share(self) -> float:
        return self.top[0][1] / self.sample if self.top and self.sample else 0.0


def opening(text: str, words: int) -> str:
    """The first ``words`` words of the first prose line, lower-cased (headings and code
    skipped: a template's own heading is not the model's opening)."""
    in_code = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
        elif stripped and not in_code and not stripped.startswith("#"):
            return " ".join(_WORD.findall(stripped.lower())[:words])
    return ""


def openings(texts: Iterable[str], words: int = 3, top: int = 10) -> Openings:
    counts: Counter[str] = Counter()
    n = 0
    for t in texts:
        n += 1
        key = opening(t, words)
        if key:
            counts[key] += 1
    return Openings(words, n, counts.most_common(top))


# ----------------------------------------------------------------------------- n-gram diversity


@dataclass(frozen=True)
class DistinctN:
    sample: int
    values: dict[int, float]  # n -> unique n-grams / n-grams


def distinct_n(texts: Iterable[str], ns: tuple[int, ...] = (1, 2, 3, 4),
               sample: int = SAMPLE) -> DistinctN:
    docs = [word_hashes(t) for t in reservoir(texts, sample)]
    values = {}
    for n in ns:
        grams = [ngram_hashes(w, n) for w in docs if len(w) >= n]
        flat = np.concatenate(grams) if grams else np.zeros(0, np.uint64)
        values[n] = len(np.unique(flat)) / len(flat) if len(flat) else 0.0
    return DistinctN(len(docs), values)


@dataclass(frozen=True)
class Compression:
    sample: int
    ratio: float  # raw bytes / gzip bytes of the sample, concatenated


def compression_ratio(texts: Iterable[str], sample: int = SAMPLE) -> Compression:
    chosen = reservoir(texts, sample)
    raw = "\n".join(chosen).encode("utf-8")
    return Compression(len(chosen), len(raw) / len(gzip.compress(raw, 9, mtime=0)) if raw else 0.0)


@dataclass(frozen=True)
class SelfRepetition:
    sample: int
    n: int
    score: float  # mean over documents of log(1 + n-grams' occurrences in other documents)


def self_repetition(texts: Iterable[str], n: int = 4, sample: int = SAMPLE) -> SelfRepetition:
    per_doc = [np.unique(ngram_hashes(w, n)) for t in reservoir(texts, sample)
               if len(w := word_hashes(t)) >= n]
    if not per_doc:
        return SelfRepetition(0, n, 0.0)
    grams, docs_with = np.unique(np.concatenate(per_doc), return_counts=True)
    scores = []
    for g in per_doc:
        others = docs_with[np.searchsorted(grams, g)] - 1
        scores.append(math.log1p(float(others.sum())))
    return SelfRepetition(len(per_doc), n, float(np.mean(scores)))


# ----------------------------------------------------------------------------- near-duplicates


@dataclass(frozen=True)
class NearDuplicates:
    sample: int
    threshold: float
    rate: float  # share of the sample that is a near (or exact) copy of another text in it
    clusters: list[list[int]]  # the largest clusters, as indexes into ``texts``, biggest first


def near_duplicates(texts: Iterable[str], threshold: float = 0.8, sample: int = SAMPLE,
                    top: int = 5) -> tuple[NearDuplicates, list[str]]:
    """The near-duplicate figures and the sampled texts the cluster indexes refer to."""
    chosen = reservoir(texts, sample)
    d = Deduplicator(threshold)
    for t in chosen:
        d.add(t)
    dropped, _ = d.finish(d.candidates(), lambda idx: {i: chosen[i] for i in idx})
    groups: dict[int, list[int]] = {}
    for dup in dropped:
        groups.setdefault(dup.kept, [dup.kept]).append(dup.index)
    biggest = sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))[:top]
    rate = len(dropped) / len(chosen) if chosen else 0.0
    return NearDuplicates(len(chosen), threshold, rate, biggest), chosen


# ----------------------------------------------------------------------------- readability


@dataclass(frozen=True)
class Readability:
    sample: int
    grade: float  # mean Flesch-Kincaid grade of the prose (code and headings left out)


def readability(texts: Iterable[str], sample: int = READABILITY_SAMPLE) -> Readability:
    import textstat

    grades = [float(textstat.flesch_kincaid_grade(p))
              for t in reservoir(texts, sample) if len((p := prose(t)).split()) >= 10]
    return Readability(len(grades), float(np.mean(grades)) if grades else 0.0)
