"""Each diversity measure against hand-made corpora whose values are known."""

from __future__ import annotations

import math
import random

import pytest

from textbook_gen.measures import (
    compression_ratio,
    distinct_n,
    near_duplicates,
    opening,
    openings,
    readability,
    reservoir,
    self_repetition,
)

WORDS = ["river", "stone", "lamp", "kite", "harbor", "maple", "quartz", "violin", "meadow",
         "comet", "lantern", "orchard", "pepper", "canyon", "falcon", "glacier", "ribbon",
         "saddle", "tunnel", "walnut", "anchor", "basket", "cactus", "dolphin", "ember"]


def _doc(rng: random.Random, n: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def test_openings_count_the_first_prose_words_and_the_top_share():
    texts = ["## Title\n\nOnce upon a time there was a kite."] * 4 + [
        f"{w.capitalize()} begins this one differently." for w in WORDS[:6]]
    o = openings(texts, words=3)
    assert o.sample == 10 and o.top[0] == ("once upon a", 4) and o.top_share == 0.4
    assert opening("```python\nx = 1\n```\n# Head\nThe first, words here", 2) == "the first"


def test_distinct_n_is_unique_over_all_ngrams():
    d = distinct_n(["a b a b", "a c"], ns=(1, 2))
    # unigrams: a b a b a c -> 3 unique of 6; bigrams: ab ba ab, ac -> 3 unique of 4
    assert d.sample == 2 and d.values == {1: 0.5, 2: 0.75}


def test_compression_ratio_is_high_for_a_repetitive_corpus():
    rng = random.Random(1)
    varied = compression_ratio([_doc(rng) for _ in range(200)])
    same = compression_ratio([_doc(random.Random(2))] * 200)
    assert varied.sample == same.sample == 200
    assert same.ratio > 10 * varied.ratio > 10  # 200 copies compress to about one document


def test_self_repetition_is_zero_without_shared_ngrams_and_log_of_shares_with():
    assert self_repetition(["one two three four five", "six seven eight nine ten"]).score == 0
    doc = "one two three four five six"  # 3 four-grams, each also in the other copy
    s = self_repetition([doc, doc])
    assert s.sample == 2 and s.score == pytest.approx(math.log1p(3))


def test_near_duplicate_rate_and_largest_cluster():
    rng = random.Random(3)
    base = _doc(rng, 300)
    twins = [base, base.replace("river", "rivers", 1), base + " extra"]
    others = [_doc(rng, 300) for _ in range(7)]
    nd, texts = near_duplicates(twins + others)
    assert nd.sample == 10 and nd.rate == pytest.approx(0.2)
    assert len(nd.clusters) == 1 and sorted(texts[i] for i in nd.clusters[0]) == sorted(twins)


def test_readability_grade_tells_simple_from_dense_prose():
    simple = ["The cat sat on the mat. It was warm. The dog ran to the cat and sat too."] * 3
    dense = ["Photosynthesis constitutes the biochemical mechanism whereby "
             "chlorophyll-containing organisms synthesize carbohydrates, utilizing "
             "electromagnetic radiation absorbed by specialized pigment complexes."] * 3
    easy, hard = readability(simple), readability(dense)
    assert easy.sample == hard.sample == 3
    assert easy.grade < 4 < 12 < hard.grade


def test_samples_are_bounded_and_reproducible():
    texts = (f"text {i}" for i in range(10_000))
    a = reservoir(texts, 50, seed=4)
    assert len(a) == 50 and a == reservoir((f"text {i}" for i in range(10_000)), 50, seed=4)
    assert len({int(t.split()[1]) // 1000 for t in a}) > 5  # drawn from the whole stream
    assert distinct_n((f"w{i} x" for i in range(5000)), sample=100).sample == 100
