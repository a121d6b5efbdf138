"""stats: coverage, rejections and diversity read from a run's outputs (here a curate output)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
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


def _textbook_gen(*args, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # a pipe's own width
    return subprocess.run([sys.executable, "-m", "textbook_gen", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env, **kw)


def test_repeated_documents_give_one_rejection_row_per_reason(tmp_path):
    """A corpus given twice more: each copy's reason names the id it copies ("exact_duplicate
    of r3#1"); rows are counted by the reason's kind, as the manifest counts them."""
    rng = random.Random(2)
    docs = [{"id": f"r{i}", "kind": "chapter", "text": "# Notes\n\n" + " ".join(
        rng.choice(WORDS) for _ in range(120)) + "."} for i in range(12)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs * 3))
    out = tmp_path / "out"
    assert _textbook_gen("curate", corpus, "--out", out).returncode == 0
    s = corpus_stats(out)
    assert s.reasons == {"dedup: exact_duplicate": 24}
    proc = _textbook_gen("stats", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("exact_duplicate") == 1, proc.stdout
    assert _textbook_gen("report", out).returncode == 0
    page = (out / "report.html").read_text()
    assert page.count("<h3>dedup: exact_duplicate") == 1


def test_stats_on_a_pipe_keeps_columns_whole_and_json_has_the_same_figures(tmp_path):
    from textbook_gen import measures
    from textbook_gen.shards import iter_records

    run = _corpus(tmp_path, planted=True)
    proc = _textbook_gen("stats", run)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout, proc.stdout
    for column in ("compression_ratio", "ngram_diversity_score", "self_repetition_score",
                   "homogenization_rougel", "word distinct-1/2/3", "most common opening"):
        assert column in proc.stdout, column
    js = _textbook_gen("stats", run, "--json")
    assert js.returncode == 0, js.stderr
    figures = json.loads(js.stdout)
    [chapters] = figures["diversity"]["kinds"]
    assert "Shaib et al. 2024" in figures["diversity"]["names"]
    texts = [measures.model_text(r) for r in iter_records(run)]
    published = chapters["published"]
    assert published["compression_ratio"]["value"] == measures.compression_ratio(texts).ratio
    assert published["ngram_diversity_score"]["value"] == pytest.approx(
        measures.ngram_diversity_score(texts).score)
    assert published["homogenization_rougel"]["sample"] == 20
    for name, figure in published.items():
        assert f"{figure['value']:.3f} [{figure['sample']}]" in proc.stdout, name
    assert chapters["ours"]["openings"]["top"][0] == ["once upon a", 8]
    assert figures["kept"] == 20 and figures["rejected_by_reason"] == {"filters: too_short": 1}


SECTIONS = ("<h2>Coverage", "<h2>Quality", "<h2>Rejections", "<h2>Diversity", "<h2>Spend",
            "<h2>Provenance")


@pytest.mark.parametrize("min_tokens", [20, 100_000], ids=["run", "run-with-nothing-kept"])
def test_every_section_of_stats_and_report_on_a_run(min_tokens, fake_api, api_env, write_spec,
                                                    tmp_path):
    from conftest import SMALL_SPEC

    from textbook_gen.run import Overrides, apply_overrides, run_curriculum
    from textbook_gen.spec import load_curriculum

    path = write_spec(SMALL_SPEC.replace(
        "curation:\n  enabled: false", f"curation:\n  min_tokens: {min_tokens}"))
    s = apply_overrides(load_curriculum(path), Overrides(base_url=[f"{fake_api.url}/v1"]))
    run_curriculum(s, out_dir=tmp_path / "out", retry_base_delay=0.01)
    run = tmp_path / "out"
    proc = _textbook_gen("stats", run)
    assert proc.returncode == 0, proc.stderr
    assert "coverage" in proc.stdout and "tokens:" in proc.stdout
    assert ("no kept documents" in proc.stdout) == (min_tokens > 20)
    figures = json.loads(_textbook_gen("stats", run, "--json").stdout)
    assert figures["usage"]["output_tokens"] > 0
    assert (figures["kept"] == 0) == (min_tokens > 20)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["diversity"] == figures["diversity"]  # named alike in the manifest
    assert _textbook_gen("report", run).returncode == 0
    page = (run / "report.html").read_text()
    assert all(section in page for section in SECTIONS)
    assert "cumulative spend" in page


def test_report_carries_the_library_once_compressed_and_each_chart_as_its_traces(tmp_path):
    import re

    from plotly.offline import get_plotlyjs

    run = _corpus(tmp_path, planted=True)
    assert _textbook_gen("report", run).returncode == 0
    page = (run / "report.html").read_text()
    library = len(get_plotlyjs())
    assert len(page.encode()) < 0.45 * library  # 4.9 MB for 20 documents before
    assert page.count("id='plotly-js-gz'") == 1 and "Plotly.newPlot" in page
    charts = re.findall(r"<script type='application/json' data-chart='[^']+'>(.*?)</script>",
                        page, flags=re.S)
    assert charts and all(len(c) < 5_000 for c in charts)  # no template: the data alone
    assert all(len(p) <= 310 for p in re.findall(r"<pre>(.*?)</pre>", page, flags=re.S))
