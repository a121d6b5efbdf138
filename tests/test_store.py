"""The run store: responses survive reopening, failures are recorded, migrations run once."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
from fakeapi import FakeAPI

from textbook_gen.errors import StoreError
from textbook_gen.providers.base import Request, Response
from textbook_gen.store import MIGRATIONS, RunStore


def _req(text: str = "hi") -> Request:
    return Request.build("openai", "m", [("user", text)], {"max_tokens": 5, "temperature": 0.5})


def test_response_is_durable_after_commit_and_reopen(tmp_path):
    path = tmp_path / "run.sqlite"
    req = _req()
    with RunStore(path) as store:
        store.put_response(req, Response("hello", "stop", 3, 1, "m", "id-1"), cost_usd=0.5,
                           attempts=2)
        store.link_job("job-1", req.key)
    with RunStore(path) as store:
        got = store.job_response("job-1")
        assert got is not None and got.text == "hello" and got.attempts == 2
        assert got.cost_usd == 0.5 and got.response_id == "id-1"
        assert store.get_request(req.key) == req
        assert store.totals()["responses"] == 1


def test_a_write_is_committed_when_its_future_resolves(tmp_path):
    path = tmp_path / "run.sqlite"
    store = RunStore(path)
    req = _req()
    fut = store.put_response(req, Response("x", "stop", 1, 1, "m"), cost_usd=0, attempts=1)
    fut.result(timeout=30)
    other = sqlite3.connect(path)  # another process's view: only what is committed
    assert other.execute("SELECT text FROM responses").fetchall() == [("x",)]
    other.close()
    store.close()


def test_failure_is_recorded_with_reason_and_replaced_by_a_later_answer(tmp_path):
    req = _req()
    with RunStore(tmp_path / "r.sqlite") as store:
        store.put_failure(req, kind="http_500", error="boom", attempts=7)
        store.link_job("j", req.key)
        store.commit()
        failed = store.job_response("j")
        assert (failed.status, failed.error_kind, failed.error) == ("failed", "http_500", "boom")
        store.put_response(req, Response("ok", "stop", 1, 1, "m"), cost_usd=0, attempts=1)
        store.commit()
        assert store.job_response("j").status == "ok"
        # a later failure of the same request never replaces the paid answer
        store.put_failure(req, kind="http_500", error="again", attempts=1)
        store.commit()
        assert store.job_response("j").text == "ok"
        assert store.job_response("j").status == "ok"


def test_migrations_are_recorded_and_not_rerun(tmp_path):
    path = tmp_path / "r.sqlite"
    RunStore(path).close()
    RunStore(path).close()
    db = sqlite3.connect(path)
    names = [r[0] for r in db.execute("SELECT name FROM migrations ORDER BY name")]
    assert names == [m[0] for m in MIGRATIONS]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ----------------------------------------------------------------------------- writes that fail


def _held(path):
    """A second connection holding the write lock of the store at ``path``."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def _rescued_partition(run_dir, answered, rescued):
    """A Ray worker's partition with ``answered`` committed and ``rescued`` saved to its
    rescue file (its store's lock was held past busy_timeout)."""
    part = run_dir / "run-part-002.sqlite"
    store = RunStore(part, exclusive=True, partitions=False, busy_timeout=0.05)
    store.put_response(answered, Response("kept", "stop", 1, 1, "m"), cost_usd=0, attempts=1,
                       job_id="j-answered").result(timeout=60)
    holder = _held(part)
    fut = store.put_response(rescued, Response("rescued", "stop", 1, 1, "m"), cost_usd=0,
                             attempts=1, job_id="j-rescued")
    assert isinstance(fut.exception(timeout=60), StoreError)
    holder.execute("ROLLBACK")
    holder.close()
    with pytest.raises(StoreError, match="loaded by the next run"):
        store.close()
    assert list(run_dir.glob("run-part-002.sqlite.rescue-*.jsonl"))
    return part


def test_the_next_run_loads_a_ray_workers_rescue_file(tmp_path):
    a, b = _req("a"), _req("b")
    part = _rescued_partition(tmp_path, a, b)
    with RunStore(tmp_path / "run.sqlite", exclusive=True) as store:  # one worker, not three
        assert store.job_response("j-answered").text == "kept"
        assert store.job_response("j-rescued").text == "rescued"
        assert store.replayed == 1
    assert not part.exists() and not list(tmp_path.glob("run-part-*"))


def test_a_rescue_file_whose_partition_is_gone_is_loaded(tmp_path):
    """Left so by an earlier version, which removed the partition and kept the rescue."""
    part = _rescued_partition(tmp_path, _req("a"), _req("b"))
    part.unlink()
    with RunStore(tmp_path / "run.sqlite") as reader:  # a reader, while no run holds the dir
        assert reader.job_response("j-rescued").text == "rescued"
    assert not list(tmp_path.glob("run-part-*"))


@pytest.mark.timeout(120)  # a hang guard: the writer used to die and leave this waiting
def test_a_value_sqlite_cannot_hold_fails_its_write_and_no_other(tmp_path):
    good, huge = _req("good"), _req("huge")
    store = RunStore(tmp_path / "run.sqlite")
    holder = _held(tmp_path / "run.sqlite")  # so both writes wait and commit in one group
    futs = [store.put_response(good, Response("fine", "stop", 1, 1, "m"), cost_usd=0,
                               attempts=1, job_id="j-good"),
            store.put_response(huge, Response("big", "stop", 1, 2**70, "m"), cost_usd=0,
                               attempts=1, job_id="j-huge")]
    holder.execute("ROLLBACK")
    holder.close()
    assert futs[0].result(timeout=60) is None
    error = futs[1].exception(timeout=60)
    assert isinstance(error, StoreError) and "out of SQLite's range" in str(error)
    assert huge.key[:12] in str(error)
    # later writes still commit; the run is stopped by commit()
    store.link_job("j-later", good.key).result(timeout=60)
    with pytest.raises(StoreError, match="out of SQLite's range"):
        store.close()
    assert not list(tmp_path.glob("run.sqlite.rescue-*"))  # a replay would fail the same way
    with RunStore(tmp_path / "run.sqlite") as store:
        assert store.job_response("j-good").text == "fine"
        assert store.job_response("j-huge") is None and store.job_key("j-later") == good.key


class _HugeUsage(FakeAPI):
    """A compatible server that reports 2**70 output tokens for every answer."""

    def _answer(self, body, anthropic, kind=None, tier=None):
        answer = super()._answer(body, anthropic, kind, tier)
        answer["usage"]["output_tokens" if anthropic else "completion_tokens"] = 2**70
        return answer


@pytest.mark.timeout(300)  # a hang guard, not a timing: the run used to wait forever
def test_usage_past_sqlites_range_stops_the_run_with_one_message(write_spec, tmp_path):
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "TEXTBOOK_GEN_RETRY_BASE_DELAY": "0.01"}
    with _HugeUsage() as server:
        proc = subprocess.run(
            [sys.executable, "-m", "textbook_gen", "run", str(write_spec()), "--out",
             str(tmp_path / "o"), "--base-url", f"{server.url}/v1", "--quiet"],
            capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert "out of SQLite's range" in proc.stderr and "Traceback" not in proc.stderr
    assert "this is a bug" not in proc.stderr


def test_a_rescue_file_written_by_the_release_before_is_loaded(tmp_path):
    """Its answers and failures have the arguments of that release's writes (no billed cost,
    no cost_known); they are loaded as it meant them, not refused."""
    import json
    import time

    a, b = _req("a"), _req("b")
    with RunStore(tmp_path / "run.sqlite") as store:
        store.commit()
    now = time.time()
    old = [("request", [a.key, a.canonical_json(), now]),
           ("response", [a.key, "saved", "stop", 3, 4, 0.25, "openai", "m", "id", 0.1, 1, None,
                         now]),
           ("link", ["j-a", a.key, now]),
           ("request", [b.key, b.canonical_json(), now]),
           ("failure", [b.key, "openai", 2, "http_500", "server error", now])]
    (tmp_path / "run.sqlite.rescue-99.jsonl").write_text(
        "".join(json.dumps(op) + "\n" for op in old))
    with RunStore(tmp_path / "run.sqlite", exclusive=True) as store:
        assert store.replayed == 1
        answer = store.job_response("j-a")
        assert answer.text == "saved" and answer.cost == 0.25
        failed = store.get_response(b.key)
        assert failed.status == "failed" and failed.cost == 0.0
    assert not list(tmp_path.glob("run.sqlite.rescue-*"))


def test_a_partition_an_older_release_left_is_taken_in(tmp_path):
    """A killed `run --ray` of the release before left a partition with that release's
    schema (no cost_known); the next run takes its answers in."""
    import time

    a = _req("a")
    part = sqlite3.connect(tmp_path / "run-part-000.sqlite", isolation_level=None)
    part.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    for name, sql in MIGRATIONS[:3]:
        part.executescript(sql)
        part.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
    now = time.time()
    part.execute("INSERT INTO requests VALUES (?, ?, ?)", (a.key, a.canonical_json(), now))
    part.execute("INSERT INTO responses (key, status, text, finish_reason, input_tokens,"
                 " output_tokens, cost_usd, created_at) VALUES (?, 'ok', 'from a worker',"
                 " 'stop', 3, 4, 0.5, ?)", (a.key, now))
    part.execute("INSERT INTO jobs VALUES ('j-a', ?, ?)", (a.key, now))
    part.close()
    with RunStore(tmp_path / "run.sqlite", exclusive=True) as store:
        answer = store.job_response("j-a")
        assert answer.text == "from a worker" and answer.cost == 0.5
    assert not (tmp_path / "run-part-000.sqlite").exists()
