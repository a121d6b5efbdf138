"""Diversity measures of a corpus: pure functions over an iterable of texts.

Model collapse shows as text that all sounds alike; these figures make it visible. Each takes
texts and returns a small frozen result that names its sample size. Where a measure holds the
texts (distinct-n, compression, self-repetition, near-duplicates, readability) it reads a
seeded reservoir sample of at most ``sample`` texts, so memory stays bounded whatever the
corpus size; openings count every text (a few words each). The live watch, ``stats`` and
``report`` call the same functions.

Two families, named apart (``docs/measures.md``):

- the published figures of Shaib et al. 2024, "Standardizing the measurement of text
  diversity", computed as their ``diversity`` package (0.3.1) computes them, so that a figure
  can be set beside a paper's: ``compression_ratio`` (the texts joined with spaces, raw bytes
  over the bytes of the package's gzip file), ``ngram_diversity_score`` (the texts joined with
  spaces and split at each space, one sequence across the corpus; the sum over n = 1..4 of
  unique n-grams over n-grams), ``self_repetition_score`` (whitespace tokens per document; the
  mean over documents of log(1 + the occurrences of its distinct 4-grams in other documents))
  and ``homogenization_rougel`` (the package's ``homogenization_score`` with ``rougel``: the
  mean ROUGE-L F1 of every pair, here on a seeded sample of at most 50 texts);
- ours, which read lower-cased words with punctuation dropped, counted within documents:
  ``word_distinct_n`` (unique over all word n-grams, per n) and the openings.
"""

from __future__ import annotations

import gzip
import io
import math
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from textbook_gen.curate.dedup import Deduplicator, ngram_hashes, word_hashes
from textbook_gen.curate.filters import prose

T = TypeVar("T")
SAMPLE = 2_000  # texts held by the sampled measures
GZIP_MTIME = 1_700_000_000  # the clock in compression_ratio's inner gzip header (2023-11-14)
HOMOGENIZATION_SAMPLE = 50  # texts whose every pair is compared: 1,225 pairs
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


# ----------------------------------------------------------------------------- ours: word n-grams


@dataclass(frozen=True)
class WordDistinct:
    sample: int
    values: dict[int, float]  # n -> unique word n-grams / word n-grams (within documents)


def word_distinct_n(texts: Iterable[str], ns: tuple[int, ...] = (1, 2, 3, 4),
                    sample: int = SAMPLE) -> WordDistinct:
    """Unique n-grams over all n-grams of lower-cased words (punctuation dropped), n-grams
    taken within each document: not the published distinct-n (see ``ngram_diversity_score``)."""
    docs = [word_hashes(t) for t in reservoir(texts, sample)]
    values = {}
    for n in ns:
        grams = [ngram_hashes(w, n) for w in docs if len(w) >= n]
        flat = np.concatenate(grams) if grams else np.zeros(0, np.uint64)
        values[n] = len(np.unique(flat)) / len(flat) if len(flat) else 0.0
    return WordDistinct(len(docs), values)


# ----------------------------------------------------------------------------- published


@dataclass(frozen=True)
class Compression:
    sample: int
    ratio: float  # raw bytes / gzip file bytes of the sample joined with spaces


def compression_ratio(texts: Iterable[str], sample: int = SAMPLE) -> Compression:
    """The ``diversity`` package's ``compression_ratio`` (gzip): the package writes the gzip of
    the joined texts into a gzip file named ``compressed.gz`` and divides by that file's size;
    the same bytes are built here in memory. The inner gzip's header carries the clock, which
    the outer gzip then compresses: the package's figure moves by a byte or so with the time
    of day; here the clock is fixed (``GZIP_MTIME``), so the figure is reproducible and equal
    to the package's at that time."""
    chosen = reservoir(texts, sample)
    raw = " ".join(chosen).encode("utf-8")
    if not raw:
        return Compression(len(chosen), 0.0)
    buf = io.BytesIO()
    with gzip.GzipFile("compressed.gz", "wb", fileobj=buf, mtime=0) as f:
        f.write(gzip.compress(raw, mtime=GZIP_MTIME))
    return Compression(len(chosen), len(raw) / len(buf.getvalue()))


@dataclass(frozen=True)
class NgramDiversity:
    sample: int
    num_n: int
    score: float  # sum over n = 1..num_n of unique / all n-grams (0 to num_n)


def _grams(ids: np.ndarray, n: int) -> np.ndarray:
    """The n-grams of a sequence of token ids, each as one opaque (void) value: exact."""
    if len(ids) < n:
        return np.zeros(0, np.dtype((np.void, 4 * n)))
    rows = np.ascontiguousarray(
        np.stack([ids[i:len(ids) - n + 1 + i] for i in range(n)], axis=1), dtype=np.int32)
    return rows.view(np.dtype((np.void, 4 * n))).ravel()


class _Vocabulary(dict[str, int]):
    def ids(self, tokens: list[str]) -> np.ndarray:
        return np.fromiter((self.setdefault(t, len(self)) for t in tokens), np.int32,
                           count=len(tokens))


def ngram_diversity_score(texts: Iterable[str], num_n: int = 4,
                          sample: int = SAMPLE) -> NgramDiversity:
    """The ``diversity`` package's ``ngram_diversity_score``: the texts joined with spaces and
    split at each space (one sequence: n-grams cross documents), summed over n = 1..num_n of
    unique n-grams over n-grams."""
    chosen = reservoir(texts, sample)
    ids = _Vocabulary().ids(" ".join(chosen).split(" ")) if chosen else np.zeros(0, np.int32)
    score = 0.0
    for n in range(1, num_n + 1):
        grams = _grams(ids, n)
        score += len(np.unique(grams)) / len(grams) if len(grams) else 0.0
    return NgramDiversity(len(chosen), num_n, score)


@dataclass(frozen=True)
class SelfRepetition:
    sample: int
    n: int
    score: float  # mean over documents of log(1 + n-grams' occurrences in other documents)


def self_repetition_score(texts: Iterable[str], n: int = 4,
                          sample: int = SAMPLE) -> SelfRepetition:
    """The ``diversity`` package's ``self_repetition_score``: whitespace tokens per document;
    for each document, log(1 + the number of other documents holding each of its distinct
    n-grams, summed), averaged over every document (one without n-grams counts 0)."""
    chosen = reservoir(texts, sample)
    if not chosen:
        return SelfRepetition(0, n, 0.0)
    vocab = _Vocabulary()
    per_doc = [np.unique(_grams(vocab.ids(t.split()), n)) for t in chosen]
    grams, docs_with = np.unique(np.concatenate(per_doc), return_counts=True)
    total = 0.0
    for g in per_doc:
        if len(g):
            total += math.log1p(float((docs_with[np.searchsorted(grams, g)] - 1).sum()))
    return SelfRepetition(len(chosen), n, total / len(chosen))


@dataclass(frozen=True)
class Homogenization:
    sample: int
    pairs: int
    score: float  # mean ROUGE-L F1 over every pair of sampled texts (0: nothing shared, 1: same)


_ROUGE_DROP = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokens (no stemmer): lower case, runs of [a-z0-9]."""
    return _ROUGE_DROP.sub(" ", text.lower()).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): one pass over
    ``b`` with ``len(a)``-bit integers, exact, about 100 times the speed of the table."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def homogenization_rougel(texts: Iterable[str],
                          sample: int = HOMOGENIZATION_SAMPLE) -> Homogenization:
    """The ``diversity`` package's ``homogenization_score(measure="rougel")`` (rouge_score's
    ROUGE-L F1, no stemmer) of a seeded sample of at most ``sample`` texts: the mean over
    every pair. F1 is symmetric, so each pair is scored once. (For a sample sharing no word
    at all the package returns 1.0, its fallback for a zero sum; this gives 0.0.)"""
    docs = [rouge_tokens(t) for t in reservoir(texts, sample)]
    total, pairs = 0.0, 0
    for i, a in enumerate(docs):
        for b in docs[i + 1:]:
            pairs += 1
            if a and b:
                total += 2 * lcs_length(a, b) / (len(a) + len(b))
    return Homogenization(len(docs), pairs, total / pairs if pairs else 0.0)


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


# ----------------------------------------------------------------------------- per kind
# What ``stats``, the report and the manifest give for each document kind.

@dataclass
class KindDiversity:
    kind: str
    documents: int
    openings: Openings
    distinct: WordDistinct  # ours: word n-grams within documents
    compression: Compression  # published (Shaib et al. 2024), as below
    ngram_diversity: NgramDiversity
    self_repetition: SelfRepetition
    homogenization: Homogenization
    near_duplicates: NearDuplicates
    cluster_examples: list[list[str]] = field(default_factory=list)  # openings of members

    def as_json(self) -> dict[str, Any]:
        """The figures by name: ``published`` as the ``diversity`` package defines them,
        ``ours`` with our word split; each with the sample it read."""
        o, nd = self.openings, self.near_duplicates
        return {
            "kind": self.kind, "documents": self.documents,
            "published": {
                "compression_ratio": {"value": self.compression.ratio,
                                      "sample": self.compression.sample},
                "ngram_diversity_score": {"value": self.ngram_diversity.score,
                                          "num_n": self.ngram_diversity.num_n,
                                          "sample": self.ngram_diversity.sample},
                "self_repetition_score": {"value": self.self_repetition.score,
                                          "n": self.self_repetition.n,
                                          "sample": self.self_repetition.sample},
                "homogenization_rougel": {"value": self.homogenization.score,
                                          "pairs": self.homogenization.pairs,
                                          "sample": self.homogenization.sample},
            },
            "ours": {
                "word_distinct_n": {"values": {str(n): v for n, v in self.distinct.values.items()},
                                    "sample": self.distinct.sample},
                "openings": {"words": o.words, "sample": o.sample, "top_share": o.top_share,
                             "top": [[text, n] for text, n in o.top]},
                "near_duplicates": {"rate": nd.rate, "threshold": nd.threshold,
                                    "sample": nd.sample,
                                    "clusters": [len(c) for c in nd.clusters]},
            },
        }


DIVERSITY_NAMES = ("published: Shaib et al. 2024, 'Standardizing the measurement of text diversity', as"
         " their diversity package (0.3.1) computes them (compression_ratio,"
         " ngram_diversity_score, self_repetition_score; homogenization_rougel is its"
         " homogenization_score with measure='rougel' on a seeded sample); ours: lower-cased"
         " words, punctuation dropped, n-grams within documents (word_distinct_n, openings,"
         " near_duplicates); see docs/measures.md")


def kind_diversity(kind: str, res: Reservoir[str]) -> KindDiversity:
    """Every diversity figure of one kind's sampled texts (``res``: their reservoir)."""
    texts: Iterable[str] = res.items
    nd, sampled = near_duplicates(texts)
    examples = [[sampled[i][:300] for i in cluster[:3]] for cluster in nd.clusters]
    return KindDiversity(kind, res.seen, openings(texts, words=3),
                         word_distinct_n(texts), compression_ratio(texts),
                         ngram_diversity_score(texts),
                         self_repetition_score(texts),
                         homogenization_rougel(texts), nd, examples)


def diversity_json(by_kind: dict[str, Reservoir[str]]) -> dict[str, Any]:
    """The figures of every kind, named (``DIVERSITY_NAMES``): what ``stats --json`` gives."""
    return {"names": DIVERSITY_NAMES,
            "kinds": [kind_diversity(k, res).as_json() for k, res in sorted(by_kind.items())]}
