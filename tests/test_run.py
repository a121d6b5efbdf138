"""A whole run: spec -> requests -> stored responses -> shards with provenance; reruns are free."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import SMALL_SPEC, needs_local_model

from textbook_gen.run import Overrides, apply_overrides, run_curriculum
from textbook_gen.shards import iter_records
from textbook_gen.spec import load_curriculum


def _spec(path, url):
    return apply_overrides(load_curriculum(path), Overrides(base_url=[f"{url}/v1"]))


def test_run_writes_shards_with_provenance_and_rerun_sends_nothing(
    fake_api, api_env, write_spec, tmp_path
):
    spec = _spec(write_spec(), fake_api.url)
    out = tmp_path / "out"
    first = run_curriculum(spec, out_dir=out)
    assert fake_api.count("/v1/chat/completions") == 6
    assert first.records == 6 and first.stats.succeeded == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["records"] == 6
    assert [s["records"] for s in manifest["shards"]] == [3, 3]
    records = list(iter_records(out))
    assert len({r["id"] for r in records}) == 6
    r = records[0]
    assert r["curriculum"] == "tiny" and r["kind"] == "chapter" and r["text"]
    prov = r["provenance"]
    assert prov["spec_sha256"] == spec.sha256
    assert prov["template"] == "chapter.md.j2" and len(prov["template_sha256"]) == 64
    assert prov["provider"] == "openai" and prov["model"] == "gpt-4o-mini"
    assert prov["response_id"].startswith("chatcmpl") and prov["finish_reason"] == "stop"
    assert prov["usage"]["output"] > 0 and prov["cost_usd"] > 0
    assert manifest["usage"]["cost_usd"] == pytest.approx(sum(
        x["provenance"]["cost_usd"] for x in records), rel=1e-3)

    second = run_curriculum(spec, out_dir=out)
    assert fake_api.count("/v1/chat/completions") == 6  # nothing sent again
    assert second.stats.cached == 6 and second.stats.sent == 0
    assert list(iter_records(out)) == records


def test_changed_prompt_resends_only_changed_jobs(fake_api, api_env, write_spec, tmp_path):
    path = write_spec()
    out = tmp_path / "out"
    run_curriculum(_spec(path, fake_api.url), out_dir=out)
    # a new audience adds 3 jobs; the other 6 prompts are unchanged
    path.write_text(SMALL_SPEC.replace("[children, adults]", "[children, adults, experts]"))
    result = run_curriculum(_spec(path, fake_api.url), out_dir=out)
    assert fake_api.count("/v1/chat/completions") == 9
    assert result.stats.cached == 6 and result.records == 9


def test_limit_runs_only_the_first_jobs(fake_api, api_env, write_spec, tmp_path):
    result = run_curriculum(_spec(write_spec(), fake_api.url), out_dir=tmp_path / "o", limit=2)
    assert fake_api.count() == 2 and result.records == 2


def test_cli_run_and_cat_give_valid_jsonl(fake_api, write_spec, tmp_path):
    path = write_spec()
    out = tmp_path / "run"
    env = {"OPENAI_API_KEY": "sk-test", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "textbook_gen", "run", str(path), "--out", str(out),
         "--base-url", f"{fake_api.url}/v1", "--limit", "4"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 kept, 0 rejected, 0 failed" in proc.stderr
    # not a terminal: plain progress lines, then where the corpus is and what to run next
    assert "generate: 4/4 jobs" in proc.stderr and "\x1b[" not in proc.stderr
    assert f"corpus: {out}/shards/" in proc.stderr and f"textbook-gen show {out}" in proc.stderr
    cat = subprocess.run([sys.executable, "-m", "textbook_gen", "cat", str(out)],
                         capture_output=True, text=True, timeout=60, check=True)
    lines = cat.stdout.splitlines()
    assert len(lines) == 4
    assert all(json.loads(line)["provenance"]["model"] == "gpt-4o-mini" for line in lines)
    text = subprocess.run([sys.executable, "-m", "textbook_gen", "cat", str(out), "--text"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert text.stdout.count("\0") == 4 and not text.stdout.startswith("{")


def test_missing_key_stops_before_any_request(fake_api, write_spec, tmp_path):
    path = write_spec()
    proc = subprocess.run(
        [sys.executable, "-m", "textbook_gen", "run", str(path), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "OPENAI_API_KEY is not set" in proc.stderr and "Traceback" not in proc.stderr
    assert fake_api.count() == 0
    assert not (tmp_path / "o").exists()


def test_anthropic_run(fake_api, api_env, write_spec, tmp_path):
    path = write_spec(SMALL_SPEC.replace("provider: openai", "provider: anthropic")
                      .replace("gpt-4o-mini", "claude-haiku-4-5"))
    spec = apply_overrides(load_curriculum(path), Overrides(base_url=[fake_api.url]))
    result = run_curriculum(spec, out_dir=tmp_path / "o")
    assert result.records == 6 and fake_api.count("/v1/messages") == 6
    assert next(iter_records(tmp_path / "o"))["provenance"]["response_id"].startswith("msg_")


@needs_local_model
def test_run_on_the_bundled_local_model(write_spec, tmp_path):
    path = write_spec(SMALL_SPEC.replace("provider: openai", "provider: local")
                      .replace("gpt-4o-mini", "smollm2-135m-instruct")
                      .replace("max_tokens: 200", "max_tokens: 16"))
    result = run_curriculum(load_curriculum(path), out_dir=tmp_path / "o", limit=2)
    records = list(iter_records(tmp_path / "o"))
    assert result.records == 2 and all(len(r["text"].split()) >= 2 for r in records)
    assert records[0]["provenance"]["model"].endswith(".gguf")
    again = run_curriculum(load_curriculum(path), out_dir=tmp_path / "o", limit=2)
    assert again.stats.cached == 2 and again.stats.sent == 0


def test_judge_runs_through_the_engine_and_store(api_env, write_spec, tmp_path):
    from fakeapi import FakeAPI

    def responder(body):
        prompt = body["messages"][-1]["content"]
        if "Educational score" in prompt:
            return "Clear and correct. Educational score: 4"
        return None  # the default textbook prose

    path = write_spec(SMALL_SPEC.replace("curation:\n  enabled: false",
                                         "curation:\n  min_tokens: 20\n  judge: {enabled: true}"))
    with FakeAPI(responder=responder) as server:
        spec = _spec(path, server.url)
        result = run_curriculum(spec, out_dir=tmp_path / "o")
        assert server.count() == 12  # 6 chapters + 6 judge calls
        records = list(iter_records(tmp_path / "o"))
        assert result.records == 6 and all(r["quality"]["judge_score"] == 4 for r in records)
        manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
        assert manifest["curation"]["stages"]["judge"]["kept"] == 6
        run_curriculum(spec, out_dir=tmp_path / "o")
        assert server.count() == 12  # scores are stored too: nothing sent again


def test_plan_counts_stored_answers_and_their_cost(fake_api, api_env, write_spec, tmp_path):
    from textbook_gen.run import plan

    spec = _spec(write_spec(), fake_api.url)
    before = plan(spec, out_dir=tmp_path / "o", show=1)
    assert before.jobs == 6 and before.stored == 0 and before.spent_usd == 0
    assert before.cost(1.0) > before.cost(0.5) > 0
    assert "[user]" in before.examples[0][1]
    run_curriculum(spec, out_dir=tmp_path / "o", limit=4)
    after = plan(spec, out_dir=tmp_path / "o")
    assert after.stored == 4 and after.to_send == 2 and after.spent_usd > 0
    assert after.cost(1.0) == pytest.approx(before.cost(1.0) / 3, rel=0.2)
    assert fake_api.count() == 4  # planning sends nothing


@needs_local_model
@pytest.mark.slow
def test_the_bundled_example_is_a_first_corpus_worth_reading(tmp_path):
    """The README's quick start: on the embedded model the closed loop fills at least half of
    the example's cells (one kept document each, at most three samples), and at least one
    exercise is verified by running it."""
    from conftest import REPO

    spec = load_curriculum(REPO / "curricula" / "python-basics.yaml")
    result = run_curriculum(spec, out_dir=tmp_path / "o")
    kept = list(iter_records(tmp_path / "o"))
    coverage = result.manifest["coverage"]
    assert coverage["target_met"] >= coverage["cells"] / 2, result.manifest["curation"]
    assert result.records == coverage["kept"]
    assert any(r["kind"] == "exercises" and r["quality"]["verified"] for r in kept)
    assert all(r["text"].startswith("## ") for r in kept)


def test_answer_start_is_continued_and_kept_as_the_start_of_the_document(
        fake_api, api_env, write_spec, tmp_path):
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "chapter.md.j2").write_text(
        "{% set answer_start %}## {{ topic | capitalize }}\n\nIn short,{% endset %}"
        "Write about {{ topic }}.")
    path = write_spec(SMALL_SPEC.replace(
        "provider: openai", "provider: anthropic").replace("gpt-4o-mini", "claude-haiku-4-5"),
        extra="templates: tpl\n")
    spec = apply_overrides(load_curriculum(path), Overrides(base_url=[fake_api.url]))
    run_curriculum(spec, out_dir=tmp_path / "o")
    sent = fake_api.generation_bodies()[0]["messages"]
    assert sent[-1]["role"] == "assistant" and sent[-1]["content"].startswith("## ")
    for r in iter_records(tmp_path / "o"):
        assert r["text"].startswith(f"## {r['topic'].capitalize()}\n\nIn short,")
        assert len(r["text"]) > len("## Fractions\n\nIn short,") + 20


def test_answer_start_is_refused_for_a_provider_that_cannot_continue(write_spec, tmp_path):
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "chapter.md.j2").write_text(
        "{% set answer_start %}## {{ topic }}{% endset %}Write about {{ topic }}.")
    path = write_spec(extra="templates: tpl\n")  # openai
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "answer_start" in proc.stderr and "openai" in proc.stderr


@pytest.mark.slow
def test_default_shards_load_with_datasets_alone(fake_api, api_env, write_spec, tmp_path):
    """A training environment with only `datasets` (no zstandard) loads the default shards."""
    import venv

    path = write_spec(SMALL_SPEC.replace("output: {format: jsonl.zst, shard_max_records: 3}",
                                         "output: {shard_max_records: 4}"))
    result = run_curriculum(_spec(path, fake_api.url), out_dir=tmp_path / "o")
    assert result.manifest["format"] == "parquet"
    env_dir = tmp_path / "train-env"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "datasets"],
                             capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        pytest.skip(f"cannot install datasets from the package index: {install.stderr[-300:]}")
    code = ("import importlib.util, sys, datasets\n"
            "assert importlib.util.find_spec('zstandard') is None\n"
            "d = datasets.load_dataset('parquet', data_files=sys.argv[1] + '/shards/*.parquet')\n"
            "print(d['train'].num_rows, sorted(d['train'].column_names)[:3])\n")
    load = subprocess.run([str(py), "-c", code, str(tmp_path / "o")], capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                       "HF_DATASETS_OFFLINE": "1",
                                                       "HOME": str(tmp_path)})
    assert load.returncode == 0, load.stderr[-2000:]
    assert load.stdout.split()[0] == "6"
