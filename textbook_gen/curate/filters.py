"""Per-document quality filters, first stage of curation.

Each filter is a small class with a ``name`` and ``filter(record) -> True | (False, reason)``
(the datatrove shape); the pipeline counts and records every rejection with its reason.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from textbook_gen.curate.dedup import ngram_hashes, words_with_lengths
from textbook_gen.curate.exercises import parse_exercises
from textbook_gen.curate.settings import CurationSettings, RepetitionSettings
from textbook_gen.tokens import count_tokens

Verdict = bool | tuple[bool, str]
Record = dict[str, Any]

REFUSAL_PHRASES = (
    "i'm sorry, but i can", "i am sorry, but i can", "i cannot help with", "i can't help with",
    "i can't assist with", "i cannot assist with", "as an ai language model",
    "i'm unable to", "i am unable to", "i won't be able to",
)
_HEADING = re.compile(r"^#{1,6}[ \t]+[^\n]*\w", re.M)  # words on the heading's own line
_FENCE = re.compile(r"^```.*?(?:^```|\Z)", re.M | re.S)  # a fenced code block


def without_code(text: str) -> str:
    """The text with its fenced code blocks removed."""
    return _FENCE.sub("", text)


def prose(text: str) -> str:
    """The text without fenced code and Markdown heading lines: what readers read as prose."""
    return "\n".join(x for x in without_code(text).splitlines()
                     if x.strip() and not x.lstrip().startswith("#"))


_FENCE_LINE = re.compile(r"^\s*```[\w+-]*\s*$")
MIN_PROSE_WORDS = 40  # a chapter teaches in sentences, not only in headings and code


class Filter:
    name: str = "filter"

    def filter(self, record: Record) -> Verdict:
        raise NotImplementedError


class LengthFilter(Filter):
    name = "length"

    def __init__(self, min_tokens: int, max_tokens: int | None):
        self.min_tokens, self.max_tokens = min_tokens, max_tokens

    def filter(self, record: Record) -> Verdict:
        q = record.setdefault("quality", {})
        tokens = q.get("tokens")  # counted for a whole chunk at once by the pipeline
        if not isinstance(tokens, int):
            tokens = q["tokens"] = count_tokens(record.get("text", ""))
        if tokens < self.min_tokens:
            return False, f"too_short ({tokens} < {self.min_tokens} tokens)"
        if self.max_tokens is not None and tokens > self.max_tokens:
            return False, f"too_long ({tokens} > {self.max_tokens} tokens)"
        return True


class TruncatedFilter(Filter):
    name = "truncated"

    def filter(self, record: Record) -> Verdict:
        if (record.get("provenance") or {}).get("finish_reason") == "length":
            return False, "truncated (the model hit max_tokens)"
        return True


class RefusalFilter(Filter):
    name = "refusal"

    def filter(self, record: Record) -> Verdict:
        reason = (record.get("provenance") or {}).get("finish_reason")
        if reason in ("refusal", "content_filter"):
            return False, f"refusal (finish_reason {reason})"
        head = record.get("text", "")[:300].lower().replace("\u2019", "'")
        for phrase in REFUSAL_PHRASES:
            if phrase in head:
                return False, f"refusal (starts with {phrase!r})"
        return True


class StockOpenerFilter(Filter):
    """Stock openers are the first sign of sameness ("Once upon a time" began 59% of TinyStories)."""

    name = "stock_opener"

    def __init__(self, openers: list[str]):
        self.openers = tuple(o.lower() for o in openers)

    def filter(self, record: Record) -> Verdict:
        text = record.get("text", "").lstrip("#* \n\t").lower().replace("\u2019", "'")
        for opener in self.openers:
            if text.startswith(opener):
                return False, f"stock_opener ({opener!r})"
        return True


class StructureFilter(Filter):
    """A chapter has a Markdown heading; an exercises document has complete exercises."""

    name = "structure"

    def filter(self, record: Record) -> Verdict:
        kind, text = record.get("kind"), record.get("text", "")
        if kind == "chapter":
            if not _HEADING.search(text):
                return False, "structure (chapter without a Markdown heading)"
            if len(prose(text).split()) < MIN_PROSE_WORDS:
                return False, "structure (chapter of headings and code, under 40 words of prose)"
        if kind == "exercises":
            exercises = parse_exercises(text)
            if not exercises:
                return False, "structure (no '## Exercise' sections)"
            complete = [e for e in exercises if e.has_code or e.answer]
            if not complete:
                return False, "structure (no exercise has a solution with tests, or an answer)"
        return True


class RepetitionFilter(Filter):
    """Gopher repetition rules: duplicate lines/paragraphs and n-gram concentration."""

    name = "repetition"

    def __init__(self, s: RepetitionSettings):
        self.s = s

    def filter(self, record: Record) -> Verdict:
        text = record.get("text", "")
        # code-fence markers (```, ```python) are markup that every code block repeats
        lines = [x.strip() for x in text.splitlines() if x.strip() and not _FENCE_LINE.match(x)]
        if lines and _dup_fraction(lines) > self.s.max_dup_line_fraction:
            return False, f"repetition (duplicate lines {_dup_fraction(lines):.2f})"
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        if len(paragraphs) > 1 and _dup_fraction(paragraphs) > self.s.max_dup_paragraph_fraction:
            return False, f"repetition (duplicate paragraphs {_dup_fraction(paragraphs):.2f})"
        # the n-gram rules measure prose loops; code repeats its identifiers by nature
        # (assert f(1)..., assert f(2)...) and is covered by the line rule and by running it
        words, lengths = words_with_lengths(without_code(text))
        total_chars = int(lengths.sum()) or 1
        for n, limit in sorted(self.s.max_top_ngram_fraction.items()):
            share = _top_ngram_share(words, lengths, n, total_chars)
            if share > limit:
                return False, f"repetition (top {n}-gram covers {share:.2f} of characters)"
        for n, limit in sorted(self.s.max_dup_ngram_fraction.items()):
            share = _dup_ngram_share(words, lengths, n, total_chars)
            if share > limit:
                return False, f"repetition (duplicated {n}-grams cover {share:.2f} of characters)"
            if share == 0.0:
                break  # no n-gram repeats, so no longer one does: the larger n pass too
        return True


def _dup_fraction(items: list[str]) -> float:
    counts = Counter(items)
    return sum(c for c in counts.values() if c > 1) / len(items)


def _runs(words: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n-gram hashes sorted (one argsort), as the sort order, each run's first place in
    it and each run's length; runs come in ascending hash order, as np.unique's do."""
    h = ngram_hashes(words, n)
    order = np.argsort(h)
    sorted_h = h[order]
    new = np.empty(len(h), bool)
    new[0] = True
    np.not_equal(sorted_h[1:], sorted_h[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    return order, starts, np.diff(starts, append=len(h))


def _top_ngram_share(words: np.ndarray, lengths: np.ndarray, n: int, total_chars: int) -> float:
    """Characters of the most frequent n-gram times its count, over all characters (ties go to
    the smallest hash)."""
    if len(words) < n:
        return 0.0
    order, starts, counts = _runs(words, n)
    best = int(counts.argmax())
    if counts[best] < 2:
        return 0.0
    start = int(order[starts[best]])  # every occurrence has the same words, so the same length
    return int(lengths[start:start + n].sum()) * int(counts[best]) / total_chars


def _dup_ngram_share(words: np.ndarray, lengths: np.ndarray, n: int, total_chars: int) -> float:
    """Characters inside n-grams that occur more than once, each character counted once."""
    if len(words) < n:
        return 0.0
    order, _, counts = _runs(words, n)
    if counts.max() < 2:
        return 0.0
    repeated_start = np.empty(len(order), np.int32)
    repeated_start[order] = np.repeat(counts > 1, counts)
    covered = np.convolve(repeated_start, np.ones(n, np.int32))[: len(words)] > 0
    return int(lengths[covered].sum()) / total_chars


def first_rejection(filters: list[Filter], record: Record) -> str | None:
    """The reason the first filter that rejects the record gives, or None."""
    for f in filters:
        verdict = f.filter(record)
        ok, reason = (verdict, f.name) if isinstance(verdict, bool) else verdict
        if not ok:
            return reason
    return None


def default_filters(s: CurationSettings) -> list[Filter]:
    """The filters a settings object turns on, cheapest first."""
    filters: list[Filter] = []
    if s.reject_truncated:
        filters.append(TruncatedFilter())
    if s.reject_refusals:
        filters.append(RefusalFilter())
    if s.count_tokens:  # without counts there are no limits (the settings see to it)
        filters.append(LengthFilter(s.min_tokens, s.max_tokens))
    if s.stock_openers:
        filters.append(StockOpenerFilter(s.stock_openers))
    if s.check_structure:
        filters.append(StructureFilter())
    if s.repetition is not None:
        filters.append(RepetitionFilter(s.repetition))
    return filters
