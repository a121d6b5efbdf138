"""The README's guarantees under faults: every job ends in one state, paid work is never lost
or paid twice, the budget holds across every paid stage, failures are never silent.

Real parts throughout: the official SDKs against the loopback server, real subprocesses for
the CLI, a real second SQLite connection holding the lock, a real full filesystem (tmpfs).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from conftest import SMALL_SPEC
from fakeapi import FakeAPI

from textbook_gen.errors import BudgetExceeded
from textbook_gen.run import Overrides, apply_overrides, plan, run_curriculum
from textbook_gen.shards import iter_records
from textbook_gen.spec import load_curriculum
from textbook_gen.store import RunStore

MANY = SMALL_SPEC.replace(
    "[counting, {name: fractions, weight: 2}]", "[" + ", ".join(f"t{i}" for i in range(20)) + "]"
) + "engine: {concurrency: 4}\n"


def _cli(*args, env_extra=None, timeout=180):
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "TEXTBOOK_GEN_RETRY_BASE_DELAY": "0.01",
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "textbook_gen", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def _run_cli(spec, out, url, *extra):
    return _cli("run", spec, "--out", out, "--base-url", f"{url}/v1", "--quiet", *extra)


def _spec(path, url, **over):
    return apply_overrides(load_curriculum(path), Overrides(base_url=[f"{url}/v1"], **over))


# ----------------------------------------------------------------------------- silent failures


def test_template_error_reached_by_some_jobs_stops_the_run_with_file_and_line(write_spec,
                                                                              tmp_path):
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "chapter.md.j2").write_text(
        "Write about {{ topic }} for {{ audience }}.\n"
        "{% if topic == 'fractions' %}{{ fraction_hint }}{% endif %}\n")
    path = write_spec(extra="templates: tpl\n")
    with FakeAPI() as server:
        proc = _run_cli(path, tmp_path / "o", server.url)
        sent = server.count()
    assert proc.returncode == 2, proc.stderr
    assert "chapter.md.j2:2" in proc.stderr and "fraction_hint" in proc.stderr
    assert "Traceback" not in proc.stderr and "done" not in proc.stderr
    # what was paid before the stop is stored
    with RunStore(tmp_path / "o" / "run.sqlite") as store:
        assert store.totals()["responses"] == sent


def test_failed_jobs_make_a_non_zero_exit_and_are_listed(write_spec, tmp_path):
    with FakeAPI() as server:
        server.script("400")
        proc = _run_cli(write_spec(extra="engine: {concurrency: 1}\n"), tmp_path / "o",
                        server.url)
    assert proc.returncode == 5, proc.stderr
    assert "1 of 6 jobs failed" in proc.stderr and "http_400" in proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "o")  # the outputs of the others are there
    assert len(list(iter_records(tmp_path / "o"))) == 5


def test_every_job_failing_against_a_closed_endpoint_is_not_success(write_spec, tmp_path):
    with FakeAPI() as server:
        url = server.url  # the port is closed once the server stops
    proc = _run_cli(write_spec(extra="engine: {max_retries: 0}\n"), tmp_path / "o", url)
    assert proc.returncode == 5, proc.stderr
    assert "6 of 6 jobs failed" in proc.stderr and "Traceback" not in proc.stderr


def test_a_rerun_that_sends_nothing_writes_no_job_row(write_spec, tmp_path):
    path = write_spec()
    with FakeAPI() as server:
        assert _run_cli(path, tmp_path / "o", server.url).returncode == 0
        db = tmp_path / "o" / "run.sqlite"
        before = sqlite3.connect(db).execute("SELECT job_id, updated_at FROM jobs").fetchall()
        assert _run_cli(path, tmp_path / "o", server.url).returncode == 0
        after = sqlite3.connect(db).execute("SELECT job_id, updated_at FROM jobs").fetchall()
        assert server.count() == 6
    assert len(before) == 6 and sorted(after) == sorted(before)


# ----------------------------------------------------------------------------- the store


def test_lock_held_by_another_process_stops_the_run_and_loses_no_paid_answer(write_spec,
                                                                              tmp_path):
    path = write_spec(MANY)
    out = tmp_path / "o"
    RunStore(out / "run.sqlite").close()
    holder = sqlite3.connect(out / "run.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a second connection holding the write lock
    with FakeAPI(latency=0.05) as server:
        proc = _run_cli(path, out, server.url)
        holder.execute("ROLLBACK")
        holder.close()
        paid = server.count()
        assert proc.returncode == 1, proc.stderr
        assert "held its lock" in proc.stderr and "Traceback" not in proc.stderr
        assert "were saved to run.sqlite.rescue-" in proc.stderr
        assert 1 <= paid < 40
        proc = _run_cli(path, out, server.url)
        assert proc.returncode == 0, proc.stderr
        assert server.count() == 40  # every answer paid in the first run was kept
    assert not list(out.glob("run.sqlite.rescue-*"))
    assert len(list(iter_records(out))) == 40


@pytest.fixture
def small_fs(tmp_path):
    """A real, small filesystem (tmpfs) that can fill up."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a small tmpfs here ({e}); needs root or CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _remount(mnt, options):
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


def test_full_disk_stops_with_a_message_and_a_rerun_finishes(write_spec, tmp_path, small_fs):
    big = "A long paragraph about numbers. " * 400  # ~13 KB an answer: 40 fill 400 KB
    path = write_spec(MANY)
    out = small_fs / "o"
    with FakeAPI(responder=lambda body: big) as server:
        proc = _run_cli(path, out, server.url)
        paid_first = server.count()
        assert proc.returncode == 1, proc.stderr
        assert "disk is full" in proc.stderr or "No space left" in proc.stderr
        assert "Traceback" not in proc.stderr and "cannot commit" not in proc.stderr
        _remount(small_fs, "size=20m")
        proc = _run_cli(path, out, server.url)
        assert proc.returncode == 0, proc.stderr
        paid_twice = server.count() - 40
    assert paid_first < 40 + 4
    assert 0 <= paid_twice <= 4  # at most the requests in flight (concurrency 4)
    assert len(list(iter_records(out))) == 40


def test_read_only_run_directory_is_one_message(write_spec, tmp_path, small_fs):
    path = write_spec()
    out = small_fs / "o"
    with FakeAPI() as server:
        assert _run_cli(path, out, server.url).returncode == 0
        _remount(small_fs, "ro")
        proc = _run_cli(path, out, server.url)
    assert proc.returncode == 1, proc.stderr
    assert str(out) in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2


# ----------------------------------------------------------------------------- money


def _judge_responder(body):
    prompt = body["messages"][-1]["content"]
    return "Clear and correct. Educational score: 4" if "Educational score" in prompt else None


JUDGED = SMALL_SPEC.replace("curation:\n  enabled: false",
                            "curation:\n  min_tokens: 20\n  judge: {enabled: true}")


def test_budget_holds_across_generation_and_judge(api_env, write_spec, tmp_path):
    path = write_spec(JUDGED, extra="engine: {concurrency: 2}\n")
    # generation of 6 jobs fits (worst case ~$0.00013 each); judging all 6 does not
    cap = 0.0012
    with FakeAPI(responder=_judge_responder) as server:
        spec = _spec(path, server.url, max_cost_usd=cap)
        p = plan(spec, out_dir=tmp_path / "o")
        assert p.judge is not None and p.judge.requests == 6
        assert p.total_cost(1.0) > cap >= p.cost(1.0)  # plan shows the judge's share
        with pytest.raises(BudgetExceeded, match="judge"):
            run_curriculum(spec, out_dir=tmp_path / "o")
        judged = sum("Educational score" in b["messages"][-1]["content"]
                     for b in server.generation_bodies())
    with RunStore(tmp_path / "o" / "run.sqlite") as store:
        assert store.totals()["cost_usd"] <= cap  # no overshoot, judge included
    assert 0 < judged < 6


def test_batch_mode_keeps_the_token_cap(api_env, write_spec, tmp_path):
    with FakeAPI(batch_complete_after=0.1) as server:
        spec = _spec(write_spec(), server.url, max_total_tokens=700)
        with pytest.raises(BudgetExceeded):
            run_curriculum(spec, out_dir=tmp_path / "b", batch=True, poll_interval=0.05)
    with RunStore(tmp_path / "b" / "run.sqlite") as store:
        t = store.totals()
        assert 1 <= t["responses"] < 6
        assert t["input_tokens"] + t["output_tokens"] <= 700


def test_a_batch_the_provider_fails_is_not_resubmitted(api_env, write_spec, tmp_path):
    with FakeAPI(batch_complete_after=0.1) as server:
        server.fail_next_batch()
        result = run_curriculum(_spec(write_spec(), server.url), out_dir=tmp_path / "b",
                                batch=True, poll_interval=0.05)
        assert server.batches_created == 1
    assert result.records == 0 and len(result.failed) == 6
    assert {f[1] for f in result.failed} == {"batch_failed"}
    assert "does not exist" in result.failed[0][2]  # the provider's own reason


# ----------------------------------------------------------------------------- job identity


def test_inserting_an_audience_resends_only_its_jobs(fake_api, api_env, write_spec, tmp_path):
    run_curriculum(_spec(write_spec(), fake_api.url), out_dir=tmp_path / "o")
    assert fake_api.count() == 6
    edited = SMALL_SPEC.replace("[children, adults]", "[children, teens, adults]")
    result = run_curriculum(_spec(write_spec(edited), fake_api.url), out_dir=tmp_path / "o")
    assert fake_api.count() == 6 + 3  # teens x 3 places; children and adults kept their seeds
    assert result.records == 9 and result.stats.cached == 6


def test_renaming_the_curriculum_resends_nothing(fake_api, api_env, write_spec, tmp_path):
    run_curriculum(_spec(write_spec(), fake_api.url), out_dir=tmp_path / "o")
    renamed = SMALL_SPEC.replace("name: tiny", "name: tiny-renamed")
    result = run_curriculum(_spec(write_spec(renamed), fake_api.url), out_dir=tmp_path / "o")
    assert fake_api.count() == 6 and result.stats.cached == 6
    assert all(r["id"].startswith("tiny-renamed/") for r in iter_records(tmp_path / "o"))


def _store_of_an_older_release(out, migrations: int, job_id: str):
    """A run directory whose store has the first ``migrations`` migrations and one job."""
    from textbook_gen.store import MIGRATIONS

    out.mkdir()
    db = sqlite3.connect(out / "run.sqlite", isolation_level=None)
    db.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    for name, sql in MIGRATIONS[:migrations]:
        db.executescript(sql)
        db.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
    db.execute("INSERT INTO jobs VALUES (?, 'k', 0)", (job_id,))
    db.close()
    return out


def test_a_store_made_before_name_ids_keeps_its_ids_and_pays_nothing_again(
        fake_api, api_env, write_spec, tmp_path):
    out = _store_of_an_older_release(tmp_path / "o", 2,
                                     "tiny/numbers/counting/chapter/a0-n0")
    with RunStore(out / "run.sqlite") as store:
        assert store.job_identity == "positions"
    spec = _spec(write_spec(), fake_api.url)
    run_curriculum(spec, out_dir=out)
    run_curriculum(spec, out_dir=out)
    assert fake_api.count() == 6
    ids = sorted(r["id"] for r in iter_records(out))
    assert ids[0] == "tiny/numbers/counting/chapter/a0-n0"  # old ids, old seeds


def test_a_store_made_with_32_bit_seeds_keeps_them_and_pays_nothing_again(
        fake_api, api_env, write_spec, tmp_path):
    import json as _json

    # the schema the release before 63-bit seeds left
    out = _store_of_an_older_release(tmp_path / "o", 4,
                                     "tiny/chapter/numbers/counting/children/n0")
    spec = _spec(write_spec(), fake_api.url)
    run_curriculum(spec, out_dir=out)
    with RunStore(out / "run.sqlite") as store:
        assert store.job_identity == "names"
        seeds = [_json.loads(b)["params"]["seed"]
                 for (b,) in store.db.execute("SELECT body FROM requests")]
    assert len(seeds) == 6 and max(seeds) < 2**32
    run_curriculum(spec, out_dir=out)
    assert fake_api.count() == 6


def test_a_new_store_takes_63_bit_seeds(fake_api, api_env, write_spec, tmp_path):
    import json as _json

    run_curriculum(_spec(write_spec(), fake_api.url), out_dir=tmp_path / "o")
    with RunStore(tmp_path / "o" / "run.sqlite") as store:
        assert store.job_identity == "names64"
        seeds = [_json.loads(b)["params"]["seed"]
                 for (b,) in store.db.execute("SELECT body FROM requests")]
    assert max(seeds) >= 2**32
    sent = [r.body["seed"] for r in fake_api.requests if isinstance(r.body, dict)]
    assert len(sent) == 6 and max(sent) < 2**32  # what servers take: 32 bits


# ----------------------------------------------------------------------------- outputs


def test_a_crash_while_rebuilding_outputs_leaves_the_old_corpus(fake_api, api_env, write_spec,
                                                                tmp_path, monkeypatch):
    from textbook_gen import shards

    path = write_spec()
    out = tmp_path / "o"
    run_curriculum(_spec(path, fake_api.url), out_dir=out)
    before = sorted((r["id"], r["text"]) for r in iter_records(out))
    real_flush = shards.ShardWriter._flush
    calls = []

    def crash(self):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device (simulated crash mid-build)")
        real_flush(self)

    monkeypatch.setattr(shards.ShardWriter, "_flush", crash)
    with pytest.raises(OSError):
        run_curriculum(_spec(path, fake_api.url), out_dir=out)
    assert sorted((r["id"], r["text"]) for r in iter_records(out)) == before
    monkeypatch.setattr(shards.ShardWriter, "_flush", real_flush)
    run_curriculum(_spec(path, fake_api.url), out_dir=out)
    assert sorted((r["id"], r["text"]) for r in iter_records(out)) == before
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {s["name"] for s in manifest["shards"]}
    on_disk = {f"{p.parent.name}/{p.name}" for sub in ("shards", "rejects")
               for p in (out / sub).glob("*")}
    assert on_disk == listed  # the half-built shards of the crashed build are gone


def test_cat_refuses_a_run_directory_without_manifest(fake_api, api_env, write_spec, tmp_path):
    out = tmp_path / "o"
    run_curriculum(_spec(write_spec(), fake_api.url), out_dir=out)
    (out / "manifest.json").unlink()
    proc = _cli("cat", out)
    assert proc.returncode == 2 and proc.stdout == ""  # bad input: not a readable output
    assert "no manifest.json" in proc.stderr and "run the same" in proc.stderr


def test_cat_refuses_a_shard_the_manifest_lists_that_is_cut_short(fake_api, api_env, write_spec,
                                                                  tmp_path):
    out = tmp_path / "o"
    run_curriculum(_spec(write_spec(), fake_api.url), out_dir=out)
    shard = next((out / "shards").glob("*.zst"))
    shard.write_bytes(shard.read_bytes()[:-10])
    proc = _cli("cat", out)
    assert proc.returncode == 1 and shard.name in proc.stderr


def test_provenance_records_the_params_actually_sent(fake_api, api_env, write_spec, tmp_path):
    one = SMALL_SPEC.replace("[children, adults]", "[children]").replace(
        "[counting, {name: fractions, weight: 2}]", "[counting]").replace(
        "max_tokens: 200", "max_tokens: 200\n  top_p: 0.9")
    fake_api.script("truncate")
    spec = _spec(write_spec(one, extra="engine: {retry_truncated: true}\n"), fake_api.url)
    run_curriculum(spec, out_dir=tmp_path / "o")
    [record] = iter_records(tmp_path / "o")
    sent = fake_api.generation_bodies()[-1]
    params = record["provenance"]["params"]
    assert params["max_tokens"] == sent["max_tokens"] == 400  # the retry's, not the job's 200
    assert params["top_p"] == sent["top_p"] == 0.9


# ----------------------------------------------------------------------------- curation order


def test_a_contaminated_best_record_does_not_take_its_near_duplicates_down(tmp_path):
    import random

    from conftest import curate_dir, read_kept, read_rejects
    from test_curate_pipeline import _records, _settings, doc, mutate

    rng = random.Random(11)
    base = doc(rng)
    item = "Compute the number of ways to tile a two by n board with dominoes and trominoes today"
    contaminated = base + " " + item  # the longer twin: dedup would rank it best
    twin = mutate(base, rng, 2)
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"q": item}) + "\n")
    curate_dir(_records([contaminated, twin]), _settings(decontaminate=[str(bench)]),
               tmp_path / "o", fmt="jsonl")
    assert [r["id"] for r in read_kept(tmp_path / "o")] == ["d1"]
    assert [r["rejected"]["stage"] for r in read_rejects(tmp_path / "o")] == ["decontaminate"]


def test_batch_refused_for_the_local_provider_without_loading_it(write_spec, tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "llama_cpp.py").write_text("raise ImportError('llama_cpp is not installed')\n")
    path = write_spec(SMALL_SPEC.replace("provider: openai", "provider: local").replace(
        "gpt-4o-mini", "smollm2-135m-instruct"))
    proc = _cli("run", path, "--batch", "--out", tmp_path / "o",
                env_extra={"PYTHONPATH": str(blocker)})
    assert proc.returncode == 2 and "no batch API" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_dedup_ranks_a_document_by_what_verification_left_of_it(tmp_path):
    """Two near-twins: A is longer before verification, but its failing exercise is cut, so
    B (all exercises pass) is longer after it and is the one kept."""
    from conftest import curate_dir, read_kept
    from test_curate_pipeline import _records, _settings

    from textbook_gen.tokens import count_tokens

    intro = "## Exercises\n" + " ".join(f"Practice item {i} builds fluency with sums." for i in
                                         range(40)) + "\n\n"
    ok = ("## Exercise {n}\nAdd {n}.\n\n### Solution\n```python\ndef add{n}(a):\n    return a + {n}\n"
          "```\n\n### Tests\n```python\nassert add{n}(1) == {m}\n```\n\n")
    bad = ok.replace("return a + {n}", "return a - {n}")
    long_bad = ("Each exercise below has a worked solution and tests that you can run. " * 6)
    a = intro + ok.format(n=1, m=2) + bad.format(n=2, m=3) + long_bad  # longer, one fails
    b = intro + ok.format(n=1, m=2) + ok.format(n=2, m=3) + ok.format(n=3, m=4)
    curate_dir(_records([a, b], kind="exercises"),
               _settings(min_tokens=5, near_dup_threshold=0.5), tmp_path, fmt="jsonl")
    kept = read_kept(tmp_path)
    assert [r["id"] for r in kept] == ["d1"]
    assert kept[0]["quality"]["tokens"] == count_tokens(kept[0]["text"])


def test_a_run_that_kept_nothing_says_so_and_exits_non_zero(fake_api, api_env, write_spec,
                                                            tmp_path):
    spec = write_spec(SMALL_SPEC.replace("curation:\n  enabled: false",
                                         "curation:\n  min_tokens: 100000\n  verify_code: false"))
    proc = _run_cli(spec, tmp_path / "o", fake_api.url)
    assert proc.returncode == 7, proc.stderr
    flat = " ".join(proc.stderr.split())
    assert "nothing kept" in flat and "nothing was kept" in flat
    assert "--rejected" in flat and "read two documents" not in flat
