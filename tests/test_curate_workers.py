"""Curation on every core: the per-document stages in worker processes, same records kept."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_kept, read_rejects

from textbook_gen.curate.facts import DocumentStage, facts_of_chunks
from textbook_gen.curate.pipeline import CHUNK, curate_corpus
from textbook_gen.curate.settings import CurationSettings

VOCAB = [f"w{i}" for i in range(4000)]


def _doc(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _mutate(text: str, rng: random.Random, changes: int) -> str:
    words = text.split()
    for _ in range(changes):
        words[rng.randrange(len(words))] = rng.choice(VOCAB)
    return " ".join(words)


def _corpus(tmp_path: Path) -> tuple[Path, Path]:
    """Three chunks and more of records with something for every stage to reject: exact and
    near duplicates across chunks, short ones, spam, and copies of a benchmark item."""
    rng = random.Random(5)
    texts = [_doc(rng, rng.randint(120, 300)) for _ in range(3 * CHUNK)]
    for i in range(0, 60):  # duplicates land in later chunks than their originals
        texts.append(texts[i] if i % 2 else _mutate(texts[i], rng, 3))
    texts += ["too short to keep"] * 5 + ["buy now " * 200] * 3
    bench_item = _doc(rng, 40)
    texts += [_doc(rng, 100) + " " + bench_item + " " + _doc(rng, 100) for _ in range(4)]
    rng.shuffle(texts)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                              for i, t in enumerate(texts)))
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": bench_item}) + "\n")
    return corpus, bench


def _outcome(out: Path) -> tuple[list[str], list[tuple[str, str, str]], dict]:
    kept = [r["id"] for r in read_kept(out)]
    rejects = [(r["id"], r["rejected"]["stage"], r["rejected"]["reason"])
               for r in read_rejects(out)]
    manifest = json.loads((out / "manifest.json").read_text())
    return kept, rejects, manifest["curation"]


def test_every_core_keeps_what_one_core_keeps(tmp_path):
    corpus, bench = _corpus(tmp_path)
    settings = CurationSettings(verify_code=False, decontaminate=[str(bench)], min_tokens=20)
    one = curate_corpus([corpus], tmp_path / "one", settings, workers=1)
    two = curate_corpus([corpus], tmp_path / "two", settings, workers=2)
    kept1, rejects1, stats1 = _outcome(tmp_path / "one")
    kept2, rejects2, stats2 = _outcome(tmp_path / "two")
    assert kept1 == kept2 and rejects1 == rejects2 and stats1 == stats2
    assert one.decontamination == two.decontamination
    # the comparison covers every kind of decision, not an empty corner of them
    reasons = {reason.split(" ")[0] for _, _, reason in rejects1}
    assert {"too_short", "exact_duplicate", "near_duplicate", "contaminated"} <= reasons
    assert stats1["decontamination"]["bench.jsonl"]["documents_removed"] == 4


def test_chunks_after_the_first_go_to_worker_processes_and_come_back_in_order(tmp_path):
    corpus, _ = _corpus(tmp_path)
    from textbook_gen.shards import iter_records

    records = list(iter_records(corpus))
    chunks = [records[i:i + 200] for i in range(0, len(records), 200)]
    settings = CurationSettings(verify_code=False)
    here = DocumentStage(settings)
    got = list(facts_of_chunks(iter(chunks), settings, workers=2))
    assert [c for c, _ in got] == chunks
    pids = [f.pid for _, f in got]
    assert pids[0] == os.getpid() and os.getpid() not in pids[1:]
    for chunk, facts in got:
        mine = here(chunk)
        assert facts.tokens == mine.tokens and facts.reasons == mine.reasons
        assert facts.keys == mine.keys and (facts.digests == mine.digests).all()


def test_one_worker_starts_no_process(tmp_path):
    corpus, _ = _corpus(tmp_path)
    from textbook_gen.shards import iter_records

    records = list(iter_records(corpus))
    chunks = [records[i:i + 300] for i in range(0, len(records), 300)]
    got = list(facts_of_chunks(iter(chunks), CurationSettings(), workers=1))
    assert {f.pid for _, f in got} == {os.getpid()}


@pytest.mark.parametrize("value", ["0", "-2"])
def test_workers_below_one_is_one_message(tmp_path, value):
    corpus, _ = _corpus(tmp_path)
    p = subprocess.run([sys.executable, "-m", "textbook_gen", "curate", str(corpus), "--out",
                        str(tmp_path / "out"), "--workers", value], capture_output=True, text=True)
    assert p.returncode == 2
    assert "--workers: must be at least 1" in p.stderr and "Traceback" not in p.stderr


def test_without_token_counts_the_same_records_are_kept_with_no_counts(tmp_path):
    corpus, bench = _corpus(tmp_path)
    counted = CurationSettings(verify_code=False, decontaminate=[str(bench)], min_tokens=0)
    uncounted = counted.model_copy(update={"count_tokens": False})
    curate_corpus([corpus], tmp_path / "counted", counted, workers=2)
    curate_corpus([corpus], tmp_path / "uncounted", uncounted, workers=2)
    kept1, rejects1, _ = _outcome(tmp_path / "counted")
    kept2, rejects2, _ = _outcome(tmp_path / "uncounted")
    # dedup ranks longer documents first either way (tokens, or characters without counts);
    # this corpus's clusters are decided the same by both
    assert set(kept1) == set(kept2) and set(rejects1) == set(rejects2)
    assert all(r["quality"]["tokens"] is None for r in read_kept(tmp_path / "uncounted"))
    assert all(isinstance(r["quality"]["tokens"], int) for r in read_kept(tmp_path / "counted"))


def test_token_limits_without_counts_is_one_message(tmp_path):
    config = tmp_path / "curation.yaml"
    config.write_text("count_tokens: false\n")  # min_tokens keeps its default, 50
    corpus, _ = _corpus(tmp_path)
    p = subprocess.run([sys.executable, "-m", "textbook_gen", "curate", str(corpus), "--out",
                        str(tmp_path / "out"), "--config", str(config)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "count_tokens: false leaves nothing to hold min_tokens" in p.stderr
    assert "curation.yaml" in p.stderr
