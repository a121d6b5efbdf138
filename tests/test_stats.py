"""stats: coverage, rejections and diversity read from a run's outputs (here a curate output)."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from conftest import curate_dir
from test_measures import WORDS

from textbook_gen.curate.settings import CurationSettings
from textbook_gen.stats import corpus_stats


def _corpus(tmp_path, planted: bool):
    rng = random.Random(7)
    records = []
    for i in range(20):
        body = " ".join(rng.choice(WORDS) for _ in range(120)) + "."
        start = "Once upon a time" if planted and i % 5 < 2 else rng.choice(WORDS).capitalize()
        records.append({"id": f"r{i}", "kind": "chapter", "topic": f"t{i % 2}",
                        "audience": "kids" if i % 2 else "adults", "text": f"{start} {body}"})
    records.append({"id": "short", "kind": "chapter", "topic": "t0", "text": "tiny"})
    settings = CurationSettings(min_tokens=20, check_structure=False, verify_code=False,
                                stock_openers=[])
    curate_dir(records, settings, tmp_path)
    return tmp_path


def test_a_planted_opening_shows_as_its_share(tmp_path):
    s = corpus_stats(_corpus(tmp_path / "p", planted=True))
    [chapters] = s.diversity
    assert chapters.documents == 20
    assert chapters.openings.top[0] == ("once upon a", 8) and chapters.openings.top_share == 0.4
    assert s.coverage[("t0", "chapter")] == {"kept": 10, "rejected": 1}
    assert s.reasons == {"filters: too_short": 1}
    clean = corpus_stats(_corpus(tmp_path / "c", planted=False))
    assert clean.diversity[0].openings.top_share < 0.2
    assert set(s.readability) == {"adults", "kids"}


def test_stats_command_prints_the_summary(tmp_path):
    run = _corpus(tmp_path, planted=True)
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "stats", str(run)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "160"})
    assert proc.returncode == 0, proc.stderr
    for expected in ("20 kept, 1 rejected", "'once upon a' 40%", "filters: too_short", "10/11"):
        assert expected in proc.stdout, proc.stdout


def test_report_is_written_for_a_curate_output_too(tmp_path):
    run = _corpus(tmp_path, planted=True)
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "report", str(run)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    page = (run / "report.html").read_text()
    assert "once upon a" in page and "No run store here" in page and "too_short" in page


def test_stats_measure_the_models_words_not_the_answer_start_its_template_wrote(
        fake_api, api_env, write_spec, tmp_path):
    """The template writes each answer's first line (answer_start, continued by the model):
    that line is the template's, so it is no opening of the model's."""
    from conftest import SMALL_SPEC

    from textbook_gen.run import Overrides, apply_overrides, run_curriculum
    from textbook_gen.spec import load_curriculum

    spec = SMALL_SPEC.replace("provider: openai", "provider: anthropic").replace(
        "name: gpt-4o-mini", "name: claude-haiku-4-5").replace(
        "[counting, {name: fractions, weight: 2}]", "[counting, fractions, sums, shapes]")
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "chapter.md.j2").write_text(
        "Write a page about {{ topic }} for {{ audience }}.\n"
        "{% set answer_start %}In this lesson we study {{ topic }}.\n\n{% endset %}\n")
    path = write_spec(spec + "templates: tpl\n")
    s = apply_overrides(load_curriculum(path), Overrides(base_url=[fake_api.url]))
    run_curriculum(s, out_dir=tmp_path / "out", retry_base_delay=0.01)
    [chapters] = corpus_stats(tmp_path / "out").diversity
    assert chapters.documents == 8
    assert all(not o.startswith("in this lesson") for o, _ in chapters.openings.top)
    assert chapters.openings.top_share < 0.5
