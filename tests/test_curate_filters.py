"""Each quality filter rejects what it should and keeps a good chapter."""

from __future__ import annotations

import pytest

from textbook_gen.curate.filters import (
    LengthFilter,
    RefusalFilter,
    RepetitionFilter,
    StockOpenerFilter,
    StructureFilter,
    TruncatedFilter,
    default_filters,
)
from textbook_gen.curate.settings import CurationSettings, RepetitionSettings

GOOD_CHAPTER = """## Fractions as parts of a whole

A fraction names a part of something that has been split into equal pieces. The number on
the bottom, the denominator, says how many equal pieces the whole was cut into. The number
on the top, the numerator, says how many of those pieces we are talking about.

### A worked example

Imagine a kite made of eight equal panels, three of them red. The red part of the kite is
three eighths, written 3/8. If two more panels were painted red, five of the eight would be
red, so the red part would grow to 5/8.

### A common mistake

Students often think 1/8 is bigger than 1/4 because eight is bigger than four. But cutting a
whole into more pieces makes each piece smaller, so 1/8 is half the size of 1/4.

### Summary

- The denominator counts the equal pieces in the whole.
- The numerator counts the pieces we take.
- More pieces in the whole means smaller pieces.
"""


def _rec(text: str = GOOD_CHAPTER, kind: str = "chapter", finish: str = "stop") -> dict:
    return {"id": "x", "text": text, "kind": kind, "provenance": {"finish_reason": finish},
            "quality": {}}


def test_all_default_filters_keep_a_good_chapter():
    for f in default_filters(CurationSettings()):
        assert f.filter(_rec()) is True, f.name


def test_length_filter_records_tokens_and_rejects_short_and_long():
    r = _rec()
    assert LengthFilter(50, None).filter(r) is True and r["quality"]["tokens"] > 150
    ok, reason = LengthFilter(50, None).filter(_rec("Too short."))
    assert not ok and reason.startswith("too_short")
    ok, reason = LengthFilter(0, 100).filter(_rec())
    assert not ok and reason.startswith("too_long")


def test_truncated_and_refusal_filters():
    assert TruncatedFilter().filter(_rec(finish="length"))[0] is False
    assert RefusalFilter().filter(_rec(finish="refusal"))[0] is False
    assert RefusalFilter().filter(_rec(finish="content_filter"))[0] is False
    refusal = _rec("I'm sorry, but I can't help with writing that chapter.")
    assert RefusalFilter().filter(refusal)[0] is False


@pytest.mark.parametrize("opener", ["Once upon a time, a fraction", "Sure! Here is a chapter",
                                    "As an AI, I will explain", "In today's world, fractions"])
def test_stock_openers_are_rejected(opener):
    f = StockOpenerFilter(CurationSettings().stock_openers)
    ok, reason = f.filter(_rec(opener + " " + GOOD_CHAPTER))
    assert not ok and reason.startswith("stock_opener")


def test_structure_filter_per_kind():
    f = StructureFilter()
    assert f.filter(_rec(GOOD_CHAPTER.replace("#", "")))[0] is False
    assert f.filter(_rec("Just prose, no exercises here.", kind="exercises"))[0] is False
    incomplete = "## Exercise 1\nAdd two numbers.\n\n### Solution\nUse plus.\n"
    assert f.filter(_rec(incomplete, kind="exercises"))[0] is False
    complete = incomplete + "\n### Answer\n5\n"
    assert f.filter(_rec(complete, kind="exercises")) is True
    assert f.filter(_rec("no heading", kind="other")) is True  # unknown kinds are not checked


def test_repetition_rules():
    f = RepetitionFilter(RepetitionSettings())
    looping = GOOD_CHAPTER + "\n".join(["This is a very simple example."] * 20)
    ok, reason = f.filter(_rec(looping))
    assert not ok and reason.startswith("repetition")
    same_paragraphs = "\n\n".join(["The kite has eight panels and three are red."] * 5)
    assert f.filter(_rec("## T\n\n" + same_paragraphs))[0] is False
    ngram_loop = "## T\n" + " ".join(["the numerator counts the pieces"] * 40)
    ok, reason = f.filter(_rec(ngram_loop))
    assert not ok and "gram" in reason


def test_an_empty_heading_is_not_a_heading_and_headings_alone_are_not_a_chapter():
    f = StructureFilter()
    prose = "Fractions name parts of a whole. " * 10
    assert f.filter(_rec("# \n" + prose))[0] is False  # the heading has no words
    assert f.filter(_rec("## Fractions\n" + prose)) is True
    outline = "## Fractions\n### Halves\n### Thirds\n```python\nprint(1/2)\n```\n"
    ok, reason = f.filter(_rec(outline))
    assert not ok and "prose" in reason


def test_code_fences_are_not_duplicate_lines():
    f = RepetitionFilter(RepetitionSettings())
    exercise = ("## Exercise 1\nWrite a function `double(x)` that returns x times 2.\n\n"
                "### Solution\n```python\ndef double(x):\n    return x * 2\n```\n\n"
                "### Tests\n```python\nassert double(3) == 6\nassert double(0) == 0\n```\n")
    assert f.filter(_rec(exercise, kind="exercises")) is True
    looping = exercise + "\n".join(["assert double(3) == 6"] * 6)
    assert f.filter(_rec(looping, kind="exercises"))[0] is False  # real repeats still count


def test_ngram_rules_measure_prose_not_the_code_blocks():
    f = RepetitionFilter(RepetitionSettings())
    tests = "\n".join(f"assert is_even({n}) == {n % 2 == 0}" for n in range(4))
    exercise = ("## Exercise 1\nWrite a function `is_even(n)` that returns True when n is even.\n\n"
                "### Solution\n```python\ndef is_even(n):\n    return n % 2 == 0\n```\n\n"
                f"### Tests\n```python\n{tests}\n```\n")
    assert f.filter(_rec(exercise, kind="exercises")) is True
    prose_loop = "## T\n" + " ".join(["the numerator counts the pieces"] * 40) + "\n" + exercise
    assert f.filter(_rec(prose_loop))[0] is False


def _reference_shares(words, lengths, n, total_chars):
    """The Gopher n-gram shares computed the plain way: np.unique and a loop over positions."""
    import numpy as np

    from textbook_gen.curate.dedup import ngram_hashes

    if len(words) < n:
        return 0.0, 0.0
    _, first, inverse, counts = np.unique(ngram_hashes(words, n), return_index=True,
                                          return_inverse=True, return_counts=True)
    best = int(counts.argmax())
    top = 0.0
    if counts[best] >= 2:
        start = int(first[best])
        top = int(lengths[start:start + n].sum()) * int(counts[best]) / total_chars
    covered = set()
    for i, k in enumerate(inverse):
        if counts[k] > 1:
            covered.update(range(i, i + n))
    return top, sum(int(lengths[i]) for i in covered) / total_chars


def test_ngram_shares_match_a_plain_reference_and_shrink_as_n_grows():
    """The sort-once shares equal np.unique's on texts full of repeats and ties, and the
    duplicated-n-gram share never grows with n (which lets the filter stop at the first n
    with none)."""
    import random

    from textbook_gen.curate.dedup import words_with_lengths
    from textbook_gen.curate.filters import _dup_ngram_share, _top_ngram_share

    rng = random.Random(7)
    vocab = ["a", "be", "cat", "door", "eagle", "fractions", "the", "of", "numerator", "x"]
    for trial in range(300):
        size = rng.choice([1, 3, 8, 40, 200])
        words_list = [rng.choice(vocab[: rng.randint(2, len(vocab))]) for _ in range(size)]
        if trial % 3 == 0:  # planted loops
            words_list += rng.choice(vocab).split() * rng.randint(2, 6) + words_list[:10] * 3
        words, lengths = words_with_lengths(" ".join(words_list))
        total = int(lengths.sum()) or 1
        previous = 1.0
        for n in range(1, 11):
            top, dup = _reference_shares(words, lengths, n, total)
            assert _top_ngram_share(words, lengths, n, total) == top
            assert _dup_ngram_share(words, lengths, n, total) == dup
            assert dup <= previous
            previous = dup
