"""show: filters by coordinates and rejection reason, a seeded random sample, Markdown output."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from conftest import curate_dir
from test_curate_pipeline import doc

from textbook_gen.curate.settings import CurationSettings
from textbook_gen.show import Selection, select


def _corpus(tmp_path):
    rng = random.Random(1)
    records = [{"id": f"r{i}", "kind": "chapter" if i % 2 else "exercises",
                "topic": "fractions" if i < 6 else "decimals",
                "text": f"## Part {i}\n\n{doc(rng, 80)}" if i != 3 else "tiny"}
               for i in range(10)]
    curate_dir(records, CurationSettings(min_tokens=20, check_structure=False,
                                         verify_code=False), tmp_path)
    return tmp_path


def test_filters_and_seeded_random_sample(tmp_path):
    run = _corpus(tmp_path)
    assert [r["id"] for r in select(run, Selection(topic="decimals", kind="chapter"))] == [
        "r7", "r9"]
    pick = [r["id"] for r in select(run, Selection(), sample=3, seed=5)]
    assert len(pick) == 3 and pick == [r["id"] for r in select(run, Selection(), sample=3, seed=5)]
    assert [r["id"] for r in select(run, Selection(reason="too_short"))] == ["r3"]
    assert [r["id"] for r in select(run, Selection(reason="filters"))] == ["r3"]  # by stage


def test_show_renders_markdown_with_provenance_and_says_when_nothing_matches(tmp_path):
    run = _corpus(tmp_path)
    cmd = [sys.executable, "-m", "textbook_gen", "show", str(run)]
    env = {**os.environ, "COLUMNS": "100"}
    one = subprocess.run([*cmd, "--id", "r1"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert one.returncode == 0 and "Part 1" in one.stdout and "## Part" not in one.stdout
    assert "tokens" in one.stdout  # the quality fields
    none = subprocess.run([*cmd, "--topic", "algebra"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert none.returncode == 0 and "no record matches" in none.stderr
