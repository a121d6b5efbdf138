"""Dedup, decontamination and the whole pipeline, in `run` and as `textbook-gen curate`."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import curate_dir, read_kept, read_rejects

from textbook_gen.curate.dedup import Deduplicator, jaccard, shingle_hashes, word_hashes
from textbook_gen.curate.settings import CurationSettings

VOCAB = [f"w{i}" for i in range(3000)]


def doc(rng: random.Random, n: int = 400) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def mutate(text: str, rng: random.Random, changes: int) -> str:
    words = text.split()
    for _ in range(changes):
        words[rng.randrange(len(words))] = rng.choice(VOCAB)
    return " ".join(words)


def similarity(a: str, b: str) -> float:
    return jaccard(shingle_hashes(word_hashes(a), 5), shingle_hashes(word_hashes(b), 5))


def test_near_duplicates_found_and_dissimilar_pairs_kept():
    rng = random.Random(1)
    base = [doc(rng) for _ in range(200)]
    texts = list(base)
    planted = {}
    for i in range(0, 40):
        twin = mutate(base[i], rng, 4)  # about 0.9 Jaccard on 5-gram shingles
        planted[len(texts)] = i
        texts.append(twin)
    far = mutate(base[50], rng, 60)  # well below 0.8
    assert similarity(far, base[50]) < 0.6
    texts.append(far)
    d = Deduplicator(0.8)
    for t in texts:
        d.add(t)
    dropped, sizes = d.finish(d.candidates(), lambda idx: {i: texts[i] for i in idx})
    pairs = {(x.index, x.kept) for x in dropped}
    assert pairs == {(i, planted[i]) for i in planted}  # every twin, nothing else
    assert all(sizes[planted[i]] == 2 for i in planted)


def test_best_of_a_cluster_is_kept_and_exact_copies_are_flagged():
    rng = random.Random(2)
    text = doc(rng)
    texts = [text, mutate(text, rng, 3), text]
    ranks = [(1.0,), (4.0,), (0.0,)]  # the second is judged best
    d = Deduplicator(0.8)
    for t, r in zip(texts, ranks, strict=True):
        d.add(t, r)
    dropped, sizes = d.finish(d.candidates(), lambda idx: {i: texts[i] for i in idx})
    assert sorted((x.index, x.kept, x.exact) for x in dropped) == [(0, 1, False), (2, 1, False)]
    assert sizes == {1: 3}


def _records(texts, kind="chapter"):
    return [{"id": f"d{i}", "text": t, "kind": kind, "provenance": {"finish_reason": "stop"},
             "quality": {}} for i, t in enumerate(texts)]


def _settings(**kw):
    base = {"min_tokens": 10, "stock_openers": [], "check_structure": False, "repetition": None}
    return CurationSettings.model_validate({**base, **kw})


def test_pipeline_writes_kept_and_rejects_with_reasons(tmp_path):
    rng = random.Random(3)
    texts = [doc(rng) for _ in range(20)]
    texts += [mutate(texts[0], rng, 2), "too short", texts[5]]
    result = curate_dir(_records(texts), _settings(), tmp_path, fmt="jsonl")
    kept = list(read_kept(tmp_path))
    rejects = {r["id"]: r["rejected"] for r in read_rejects(tmp_path)}
    assert len(kept) == 20 and len(rejects) == 3
    assert rejects["d21"]["stage"] == "filters" and rejects["d21"]["reason"].startswith("too_short")
    pair = {"d0": "d20", "d20": "d0"}
    [loser] = [i for i in pair if i in rejects]  # one of the near-twins goes, naming the other
    assert rejects[loser]["reason"] == f"near_duplicate of {pair[loser]}"
    assert rejects["d22"]["reason"] == "exact_duplicate of d5"
    counts = result.to_manifest()["stages"]
    assert counts["filters"]["dropped"] == {"too_short": 1}
    assert counts["dedup"]["in"] == 22 and counts["dedup"]["kept"] == 20
    assert all(r["quality"]["tokens"] > 100 for r in kept)
    survivor = next(r for r in kept if r["id"] in ("d0", "d20"))
    assert survivor["quality"]["dup_cluster"].endswith("~2")


@pytest.mark.parametrize("kind", ["jsonl", "txt", "parquet"])
def test_planted_benchmark_item_is_found(tmp_path, kind):
    rng = random.Random(4)
    texts = [doc(rng) for _ in range(10)]
    item = "Write a function that returns the sum of the squares of the odd numbers in a list of integers"
    texts[3] = texts[3][:500] + " " + item + " " + texts[3][500:]
    bench = tmp_path / f"bench.{kind}"
    rows = [{"task": "t0", "prompt": item}, {"task": "t1", "prompt": "short one"}]
    if kind == "jsonl":
        bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "txt":
        bench.write_text("\n".join(r["prompt"] for r in rows) + "\n")
    else:
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(rows), bench)
    spec = {"path": str(bench), "field": "prompt"} if kind != "txt" else str(bench)
    result = curate_dir(_records(texts), _settings(decontaminate=[spec]), tmp_path / "o", fmt="jsonl")
    report = result.decontamination[bench.name]
    assert report == {"documents_removed": 1, "items_hit": 1, "items_indexed": 1,
                      "items_too_short": 1}
    rejects = list(read_rejects(tmp_path / "o"))
    assert [r["id"] for r in rejects] == ["d3"]
    assert rejects[0]["rejected"]["reason"] == f"contaminated ({bench.name})"


@pytest.mark.parametrize("kind", ["jsonl", "txt"])
def test_a_contaminated_reject_names_the_file_the_item_and_the_shared_ngram(tmp_path, kind):
    rng = random.Random(5)
    texts = [doc(rng) for _ in range(6)]
    item = ("Return the Number of vowels in a string, counting y as a vowel only when it ends"
            " the word")
    texts[2] = texts[2][:300] + " Quiz: " + item + "? " + texts[2][300:]
    others = ["Sort a list of integers in place using insertion sort and return the list"
              " afterwards please", "short"]
    bench = tmp_path / f"bench.{kind}"
    if kind == "jsonl":
        rows = [{"task_id": f"Bench/{i}", "prompt": p} for i, p in enumerate([*others, item])]
        bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec: object = {"path": str(bench), "field": "prompt"}
        where = "Bench/2 (record 3)"
    else:  # a blank line before the item: its line number, not its position among items
        bench.write_text(others[0] + "\n\n" + others[1] + "\n" + item + "\n")
        spec, where = str(bench), "line 4"
    curate_dir(_records(texts), _settings(decontaminate=[spec]), tmp_path / "o", fmt="jsonl")
    [reject] = read_rejects(tmp_path / "o")
    assert reject["id"] == "d2"
    first13 = " ".join(item.lower().split()[:13])  # as the document has it, lower-cased
    assert reject["rejected"]["detail"] == (
        f"{bench.name}: {where} shares the 13-gram {first13!r}")


def test_missing_benchmark_file_is_a_clear_error(tmp_path):
    from textbook_gen.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        curate_dir([], _settings(decontaminate=[str(tmp_path / "nope.jsonl")]), tmp_path)


def test_exercises_are_verified_in_the_pipeline(tmp_path):
    good = ("## Exercise 1\nAdd.\n\n### Solution\n```python\ndef add(a, b):\n    return a + b\n```"
            "\n\n### Tests\n```python\nassert add(1, 2) == 3\n```\n")
    bad = good.replace("return a + b", "return a - b")
    result = curate_dir(_records([good, bad], kind="exercises"),
                    _settings(min_tokens=5, check_structure=True), tmp_path, fmt="jsonl")
    kept = list(read_kept(tmp_path))
    rejects = list(read_rejects(tmp_path))
    assert [r["quality"]["verified"] for r in kept] == [True]
    assert rejects[0]["rejected"]["stage"] == "verify"
    assert "AssertionError" in rejects[0]["rejected"]["detail"]
    assert result.counts["verify"].dropped["exercise_failed"] == 1


def test_judge_scores_filter_and_rank(tmp_path):
    rng = random.Random(5)
    texts = [doc(rng) for _ in range(4)]
    texts.append(mutate(texts[0], rng, 2))
    scores = {"d0": 3, "d1": 5, "d2": 1, "d3": None, "d4": 4}
    seen = []

    def judge(records):
        seen.extend(r["id"] for r in records)
        return {r["id"]: scores[r["id"]] for r in records}

    curate_dir(_records(texts), _settings(judge={"enabled": True, "min_score": 3}), tmp_path,
           fmt="jsonl", judge=judge)
    kept = {r["id"]: r for r in read_kept(tmp_path)}
    rejects = {r["id"]: r["rejected"]["reason"]
               for r in read_rejects(tmp_path)}
    assert sorted(seen) == ["d0", "d1", "d2", "d3", "d4"]
    assert set(kept) == {"d1", "d4"}  # d4 outranks its near-duplicate d0 (score 4 > 3)
    assert kept["d4"]["quality"]["judge_score"] == 4
    assert rejects["d0"] == "near_duplicate of d4"
    assert rejects["d2"].startswith("judge_score") and rejects["d3"] == "judge_unscored"


def test_curate_command_on_plain_jsonl_made_elsewhere(tmp_path):
    rng = random.Random(6)
    texts = [doc(rng, 120) for _ in range(30)]
    texts.append(texts[7])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "source": "elsewhere"}) + "\n"
                              for t in texts))
    config = tmp_path / "curation.yaml"
    config.write_text("min_tokens: 20\nrepetition: null\n")
    out = tmp_path / "clean"
    proc = subprocess.run(
        [sys.executable, "-m", "textbook_gen", "curate", str(corpus), "--out", str(out),
         "--config", str(config), "--format", "parquet"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["curation"]["kept"] == 30 and manifest["curation"]["rejected"] == 1
    [shard] = [s["name"] for s in manifest["shards"] if s["name"].startswith("shards/")]
    table = pq.read_table(out / shard)
    assert table.num_rows == 30 and "source" in table.column_names
    assert table.column("id")[0].as_py() == "corpus.jsonl:1"
    cat = subprocess.run([sys.executable, "-m", "textbook_gen", "cat", str(out), "--rejects"],
                         capture_output=True, text=True, timeout=60, check=True)
    reject = json.loads(cat.stdout)
    assert reject["rejected"]["reason"] == "exact_duplicate of corpus.jsonl:8"


def test_curate_command_rejects_records_without_text(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"body": "x"}\n')
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "curate", str(corpus), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no 'text'" in proc.stderr and "Traceback" not in proc.stderr


def _curate_cli(tmp_path, config):
    corpus = tmp_path / "corpus.jsonl"
    rng = random.Random(8)
    corpus.write_text("".join(json.dumps({"text": doc(rng, 120)}) + "\n" for _ in range(3)))
    return subprocess.run(
        [sys.executable, "-m", "textbook_gen", "curate", str(corpus), "--out",
         str(tmp_path / "o"), "--config", str(config), "-q"],
        capture_output=True, text=True, timeout=120)


def test_curate_refuses_a_curation_file_that_asks_for_the_judge(tmp_path):
    config = tmp_path / "curation.yaml"
    config.write_text("min_tokens: 20\njudge:\n  enabled: true\n")
    proc = _curate_cli(tmp_path, config)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{config}:3: judge.enabled: curate runs no judge" in proc.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_curate_with_a_curriculum_says_its_judge_is_not_run(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nmodel: {provider: openai, name: gpt-4o-mini}\n"
                    "subjects: [{name: S, topics: [T]}]\n"
                    "documents: [{kind: chapter, template: chapter.md.j2}]\n"
                    "curation:\n  min_tokens: 20\n  judge: {enabled: true}\n")
    proc = _curate_cli(tmp_path, spec)
    assert proc.returncode == 0, proc.stderr
    assert f"{spec}:7: curate runs no judge" in proc.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["settings"]["judge"]["enabled"] is False  # what ran, not what was asked
    assert manifest["curation"]["kept"] == 3


def test_repeated_input_ids_stay_unique_with_an_input_id_that_looks_like_a_suffix(tmp_path):
    """Ids a, a, a#2: the second a cannot take a#2 and keep the third's a#2 unique too; the
    rule (pipeline.UniqueIds) is the one Ray's driver runs (tests/test_ray.py compares them)."""
    from textbook_gen.curate.pipeline import curate_corpus

    source = tmp_path / "in.jsonl"
    ids = ["a", "a", "a#2", "b", "a", "a#2#2", "b#2", "b"]
    source.write_text("".join(json.dumps({"id": i, "text": f"document {n} " * 20}) + "\n"
                              for n, i in enumerate(ids)))
    curate_corpus([source], tmp_path / "out", CurationSettings(enabled=False), workers=1)
    got = [r["id"] for r in read_kept(tmp_path / "out")]
    assert got == ["a", "a#2", "a#2#2", "b", "a#3", "a#2#2#2", "b#2", "b#3"]
