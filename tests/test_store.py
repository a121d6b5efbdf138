"""The run store: responses survive reopening, failures are recorded, migrations run once."""

from __future__ import annotations

import sqlite3

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
