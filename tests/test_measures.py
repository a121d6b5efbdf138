"""Each diversity measure against hand-made corpora whose values are known."""

from __future__ import annotations

import math
import random

import pytest

from textbook_gen.measures import (
    compression_ratio,
    homogenization_rougel,
    lcs_length,
    near_duplicates,
    ngram_diversity_score,
    opening,
    openings,
    readability,
    reservoir,
    self_repetition_score,
    word_distinct_n,
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


def test_word_distinct_n_is_unique_over_all_ngrams():
    d = word_distinct_n(["a b a b", "a c"], ns=(1, 2))
    # unigrams: a b a b a c -> 3 unique of 6; bigrams: ab ba ab, ac -> 3 unique of 4
    assert d.sample == 2 and d.values == {1: 0.5, 2: 0.75}


def test_compression_ratio_is_high_for_a_repetitive_corpus():
    rng = random.Random(1)
    varied = compression_ratio([_doc(rng) for _ in range(200)])
    same = compression_ratio([_doc(random.Random(2))] * 200)
    assert varied.sample == same.sample == 200
    assert same.ratio > 10 * varied.ratio > 10  # 200 copies compress to about one document


def test_self_repetition_is_zero_without_shared_ngrams_and_log_of_shares_with():
    assert self_repetition_score(["one two three four five", "six seven eight nine ten"]
                                 ).score == 0
    doc = "one two three four five six"  # 3 four-grams, each also in the other copy
    s = self_repetition_score([doc, doc, "too short"])  # a text without 4-grams counts 0
    assert s.sample == 3 and s.score == pytest.approx(2 * math.log1p(3) / 3)


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
    assert word_distinct_n((f"w{i} x" for i in range(5000)), sample=100).sample == 100


# ----------------------------------------------------------------------------- published figures
# The ``diversity`` package (Shaib et al. 2024) imports sentence-transformers, spacy and
# evaluate in its __init__; its compression, n-gram and self-repetition modules need only the
# standard library, nltk and numpy, so they are loaded from the installed wheel by path.


def _package(module: str, name: str):
    import importlib.metadata
    import importlib.util

    try:
        path = importlib.metadata.distribution("diversity").locate_file(f"diversity/{module}.py")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs the diversity package: pip install --no-deps diversity==0.3.1 nltk")
    spec = importlib.util.spec_from_file_location(f"_diversity_{module}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def _corpora() -> dict[str, list[str]]:
    """A varied corpus, one where half the texts open the same way, and one of copies; with
    markdown, punctuation, capitals and doubled spaces, where the word splits differ."""
    rng = random.Random(11)

    def doc(i: int) -> str:
        return (f"## Part {i}\n\n{rng.choice(WORDS).capitalize()}, " + _doc(rng, 80)
                + "\n\n```python\nx  = 1\n```\nThe End.")
    varied = [doc(i) for i in range(40)]
    collapsed = [("In this chapter we will explore the wonders of " + t) if i % 2 else t
                 for i, t in enumerate(varied)]
    return {"varied": varied, "collapsed": collapsed, "copies": [varied[0]] * 10}


@pytest.mark.parametrize("corpus", ["varied", "collapsed", "copies"])
def test_published_figures_agree_with_the_diversity_package(corpus, tmp_path, monkeypatch):
    import gzip

    from textbook_gen.measures import GZIP_MTIME

    # the package's inner gzip header carries the clock, which its outer gzip compresses
    monkeypatch.setattr(gzip.time, "time", lambda: float(GZIP_MTIME))
    texts = _corpora()[corpus]
    package_cr = _package("compression", "compression_ratio")
    package_ngram = _package("ngram_diversity", "ngram_diversity_score")
    package_sr = _package("self_repetition", "self_repetition_score")
    assert round(compression_ratio(texts).ratio, 3) == package_cr(texts, path=str(tmp_path))
    assert round(ngram_diversity_score(texts).score, 3) == package_ngram(texts, 4)
    assert self_repetition_score(texts).score == pytest.approx(
        package_sr(texts, 4, verbose=False), abs=1e-9)


@pytest.mark.parametrize("corpus", ["varied", "collapsed", "copies"])
def test_homogenization_is_the_packages_rougel_mean_over_pairs(corpus):
    """The package's homogenization_score(measure="rougel") scores every ordered pair with
    rouge_score's RougeScorer(["rougeL"]) and averages; it also imports evaluate (and with it
    datasets and pyarrow) at module level, so its loop is written out here over the same
    scorer."""
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    texts = _corpora()[corpus][:12]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    total = 0.0
    for i, ref in enumerate(texts):
        preds = [x for j, x in enumerate(texts) if j != i]
        total += sum(scorer.score(p, ref)["rougeL"].fmeasure for p in preds) / (len(texts) - 1)
    h = homogenization_rougel(texts)
    assert h.sample == len(texts) and h.pairs == len(texts) * (len(texts) - 1) // 2
    assert round(h.score, 3) == round(total / len(texts), 3)


def test_homogenization_rises_when_half_the_corpus_opens_the_same_way():
    c = _corpora()
    varied, collapsed = homogenization_rougel(c["varied"]), homogenization_rougel(c["collapsed"])
    assert homogenization_rougel(c["copies"]).score == 1.0
    assert collapsed.score > varied.score


def test_lcs_length_matches_the_table():
    rng = random.Random(5)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randrange(0, 30))]
        b = [rng.choice("abcd") for _ in range(rng.randrange(0, 30))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = (table[i][j] + 1 if x == y
                                       else max(table[i][j + 1], table[i + 1][j]))
        assert lcs_length(a, b) == table[-1][-1]


def test_published_figures_by_their_formulas_without_the_package():
    """Values worked by hand from the published formulas (these run where the package is not
    installed): the split is at each space and n-grams cross documents."""
    # "a b" + " " + "a  b" -> tokens a, b, a, "", b: 3 distinct of 5 unigrams, 4 of 4 bigrams,
    # 3 of 3 trigrams, 2 of 2 four-grams
    assert ngram_diversity_score(["a b", "a  b"]).score == pytest.approx(0.6 + 3)
    # whitespace tokens keep case and punctuation: "The cat." and "the cat" share no 4-gram
    assert self_repetition_score(["The cat sat down.", "the cat sat down"]).score == 0
