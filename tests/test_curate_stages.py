"""Pipeline behaviours beyond the basics: the cluster's best record, switching curation off,
the judge rubric, and the manifest's account of the sandbox."""

from __future__ import annotations

import random

from conftest import curate_dir, read_kept, read_rejects

from textbook_gen.curate.judge import judge_prompt, parse_judge_score
from textbook_gen.curate.settings import CurationSettings

VOCAB = [f"w{i}" for i in range(3000)]


def _doc(rng: random.Random, n: int = 400) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _records(texts: list[str], kind: str = "chapter") -> list[dict]:
    return [{"id": f"d{i}", "text": t, "kind": kind, "provenance": {"finish_reason": "stop"},
             "quality": {}} for i, t in enumerate(texts)]


def _settings(**kw) -> CurationSettings:
    base = {"min_tokens": 10, "stock_openers": [], "check_structure": False, "repetition": None}
    return CurationSettings.model_validate({**base, **kw})


def test_without_judge_scores_the_longest_of_a_cluster_is_kept(tmp_path):
    rng = random.Random(11)
    base = _doc(rng)
    texts = [_doc(rng), base, base + " " + " ".join(VOCAB[:12]), base[: len(base) - 30]]
    curate_dir(_records(texts), _settings(), tmp_path, fmt="jsonl")
    kept = {r["id"]: r for r in read_kept(tmp_path)}
    rejects = {r["id"]: r["rejected"] for r in read_rejects(tmp_path)}
    assert set(kept) == {"d0", "d2"}
    assert kept["d2"]["quality"]["dup_cluster"] == "d2~3"
    assert kept["d0"]["quality"]["dup_cluster"] is None
    assert rejects["d1"] == {"stage": "dedup", "reason": "near_duplicate of d2", "detail": "",
                            "chosen": None}
    assert rejects["d3"]["reason"] == "near_duplicate of d2"


def test_verified_exercises_outrank_unverified_twins(tmp_path):
    story = " ".join(VOCAB[100:220])  # a long shared problem statement
    ok = (f"## Exercise 1\nWrite add. {story}\n\n### Solution\n"
          "```python\ndef add(a, b):\n    return a + b\n```\n\n"
          "### Tests\n```python\nassert add(2, 3) == 5\nassert add(0, 0) == 0\n```\n")
    # the same exercise with tests that cannot be run: never verified, and a little longer
    unverified = ok.replace("### Tests", "Checks to try by hand:").replace("```python\nassert",
                                                                            "```text\nassert")
    curate_dir(_records([unverified, ok], kind="exercises"), _settings(min_tokens=5),
           tmp_path, fmt="jsonl")
    kept = list(read_kept(tmp_path))
    assert [r["id"] for r in kept] == ["d1"] and kept[0]["quality"]["verified"] is True


def test_curation_switched_off_keeps_everything(tmp_path):
    texts = ["short", "Once upon a time " * 50, "short"]
    records = _records(texts)
    records[1]["provenance"]["finish_reason"] = "length"
    result = curate_dir(records, CurationSettings(enabled=False), tmp_path, fmt="jsonl")
    kept = list(read_kept(tmp_path))
    assert [r["id"] for r in kept] == ["d0", "d1", "d2"] and sum(s.records for s in result.rejects) == 0
    assert all(r["quality"]["tokens"] > 0 for r in kept)


def test_manifest_names_the_sandbox_when_exercises_ran(tmp_path):
    ex = ("## Exercise 1\nAdd.\n\n### Solution\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
          "### Tests\n```python\nassert add(1, 1) == 2\n```\n")
    m = curate_dir(_records([ex], kind="exercises"), _settings(min_tokens=5), tmp_path,
                   fmt="jsonl").to_manifest()
    import shutil
    import subprocess

    version = subprocess.run([shutil.which("bwrap"), "--version"], capture_output=True,
                             text=True).stdout.strip()
    assert m["verify_sandbox"][0] == version  # the isolation tool that really ran it
    assert m["stages"]["verify"] == {"in": 1, "kept": 1, "dropped": {}}


def test_judge_rubric_renders_and_scores_parse():
    prompt = judge_prompt({"text": "## Loops\nA loop repeats.", "kind": "chapter",
                           "audience": "adult career changers"})
    assert "A loop repeats." in prompt and "adult career changers" in prompt
    assert "Educational score:" in prompt
    assert judge_prompt({"text": "bare text from elsewhere"})  # no kind or audience: still renders
    assert parse_judge_score("Good structure.\nEducational score: 4") == 4
    assert parse_judge_score("**Educational score:** 3 points... Educational score: 5") == 5
    assert parse_judge_score("Educational score: 9") == 5
    assert parse_judge_score("I think it's fine.") is None
