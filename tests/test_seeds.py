"""Seed documents: a deterministic draw (BM25 on the topic, or random) from an index built once,
provenance that names the seed, and the copy guard."""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys

import pytest
from fakeapi import FakeAPI, default_text

from textbook_gen.expand import jobs
from textbook_gen.run import Overrides, apply_overrides, plan, run_curriculum
from textbook_gen.seeds import SeedIndex, ngram_overlap
from textbook_gen.shards import iter_records
from textbook_gen.spec import load_curriculum

TOPICS = ["volcanoes", "glaciers", "earthquakes", "rivers", "deserts", "tides"]
FILLER = [
    "the", "of", "land", "water", "rock", "stone", "heat", "cold", "wind", "rain", "soil",
    "sky", "layer", "flow", "time", "slow", "fast", "change", "shape", "force", "energy",
    "year", "place", "people", "map", "study", "field"
]

SPEC = """\
name: grounded
seed: 9
model: {provider: openai, name: gpt-4o-mini, max_tokens: 200}
audiences: [children]
subjects:
  - name: Earth
    topics: [%s]
documents:
  - {kind: chapter, template: chapter.md.j2, per: [topic, audience], samples: 4}
seeds: {path: seeds.jsonl, id_field: url, match: %s, top: 5}
curation:
  min_tokens: 20
  check_structure: false
  stock_openers: []
output: {format: jsonl}
"""


def _seed_file(path, n=300):
    rng = random.Random(1)
    with open(path, "w") as f:
        for i in range(n):
            words = rng.choices(FILLER, k=60)
            if i % 3 == 0:  # a third of the seeds are about one topic
                topic = TOPICS[(i // 3) % len(TOPICS)]
                for k in range(0, 60, 12):
                    words[k] = topic
            f.write(json.dumps({"url": f"https://example.org/{i}",
                                "text": " ".join(words).capitalize() + "."}) + "\n")


@pytest.fixture
def grounded(write_spec, tmp_path):
    _seed_file(tmp_path / "seeds.jsonl")

    def make(match="topic"):
        return write_spec(SPEC % (", ".join(TOPICS), match), name=f"spec-{match}.yaml")

    return make


def _draws(spec_path, index_dir):
    code = ("import sys, json\n"
            "from textbook_gen.spec import load_curriculum\n"
            "from textbook_gen.expand import jobs\n"
            "from textbook_gen.run import open_seeds\n"
            "spec = load_curriculum(sys.argv[1])\n"
            "seeds = open_seeds(spec, sys.argv[2])\n"
            "print(json.dumps([[j.topic, seeds.for_job(j).id] for j in jobs(spec)]))\n")
    out = subprocess.run([sys.executable, "-c", code, str(spec_path), str(index_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_draw_is_the_same_in_every_process_and_index(grounded, tmp_path):
    path = grounded()
    first = _draws(path, tmp_path / "a")
    assert first == _draws(path, tmp_path / "a")  # the index is reused
    assert first == _draws(path, tmp_path / "b")  # and rebuilt the same
    assert len(list((tmp_path / "a").glob("seeds-*.sqlite"))) == 1


def test_topic_matching_picks_seeds_about_the_topic(grounded, tmp_path):
    def share_on_topic(path):
        spec = load_curriculum(path)
        index = SeedIndex(spec.seeds, path.parent, tmp_path / "idx")
        hits = [j.topic in index.for_job(j).text for j in jobs(spec)]
        return sum(hits) / len(hits)

    matched, random_ = share_on_topic(grounded("topic")), share_on_topic(grounded("random"))
    assert matched == 1.0  # every topic has seeds about it: the top 5 are all about it
    assert random_ < 0.3  # at random, about a third of the seeds are on some topic, 1/18 on it


def test_provenance_names_the_seed_and_its_hash(api_env, grounded, tmp_path):
    path = grounded()
    texts = {json.loads(line)["url"]: json.loads(line)["text"]
             for line in (tmp_path / "seeds.jsonl").read_text().splitlines()}
    with FakeAPI() as server:
        spec = apply_overrides(load_curriculum(path), Overrides(base_url=[f"{server.url}/v1"]))
        run_curriculum(spec, out_dir=tmp_path / "o")
        prompts = [b["messages"][-1]["content"] for b in server.generation_bodies()]
    records = list(iter_records(tmp_path / "o"))
    assert len(records) == len(TOPICS) * 4
    for r in records:
        seed = r["provenance"]["seed_document"]
        assert seed["sha256"] == hashlib.sha256(texts[seed["id"]].encode()).hexdigest()
        assert seed["source"] == "seeds.jsonl"
    # each prompt carried its seed's text, and the bundled template says not to copy it
    assert all("Do not copy it" in p and "<extract" in p for p in prompts)
    assert sum(any(t[:80] in p for p in prompts) for t in texts.values()) >= 6


def test_plan_show_names_each_prompts_seed(grounded, tmp_path):
    path = grounded()
    p = plan(load_curriculum(path), show=2, out_dir=tmp_path / "o")
    assert all(text.startswith("[seed document] https://example.org/") for _, text in p.examples)


def test_a_copy_of_the_seed_is_rejected_and_a_paraphrase_kept(api_env, grounded, tmp_path):
    path = grounded()

    def responder(body):
        prompt = body["messages"][-1]["content"]
        extract = re.search(r"<extract[^>]*>\n(.*?)\n</extract>", prompt, re.S).group(1)
        if body.get("seed", 0) % 2:  # a planted copy: the seed, lightly framed
            return "## Notes\n\n" + extract + "\n\nThat is all."
        words = extract.split()  # a "paraphrase": the seed's words, never 8 in a row
        return "## Notes\n\n" + " ".join(
            w + (" indeed" if i % 5 == 4 else "") for i, w in enumerate(words)) + "\n"

    with FakeAPI(responder=responder) as server:
        spec = apply_overrides(load_curriculum(path), Overrides(base_url=[f"{server.url}/v1"]))
        run_curriculum(spec, out_dir=tmp_path / "o")
    kept = list(iter_records(tmp_path / "o"))
    rejects = list(iter_records(tmp_path / "o", "rejects"))
    copies = [r for r in rejects if r["rejected"]["reason"].startswith("copies_seed")]
    assert copies and all(r["provenance"]["seed"] % 2 for r in copies)
    assert kept and all(r["provenance"]["seed"] % 2 == 0 for r in kept)
    assert len(copies) + len(kept) == len(TOPICS) * 4


def test_ngram_overlap_measures_copying():
    seed = " ".join(default_text("s").split())
    assert ngram_overlap(seed, seed, 8) == 1.0
    assert ngram_overlap(default_text("other"), seed, 8) < 0.05


def test_a_seed_file_without_the_text_field_is_one_message(write_spec, tmp_path):
    (tmp_path / "seeds.jsonl").write_text('{"body": "no text field here"}\n')
    path = write_spec(SPEC % ("rivers", "topic"))
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "plan", str(path), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no 'text' text field" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_names_a_missing_seed_file_with_its_line(write_spec, tmp_path):
    path = write_spec(SPEC % ("rivers", "topic"))
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{path}:10: seeds.path:" in proc.stderr, proc.stderr
