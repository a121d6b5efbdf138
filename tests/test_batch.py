"""Batch mode against the loopback server speaking the OpenAI Batch and Anthropic Message
Batches protocols: end to end, expired batches, crash recovery without double submission."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import SMALL_SPEC
from fakeapi import FakeAPI

from textbook_gen.run import Overrides, apply_overrides, run_curriculum
from textbook_gen.shards import iter_records
from textbook_gen.spec import load_curriculum
from textbook_gen.store import RunStore

ANTHROPIC_SPEC = SMALL_SPEC.replace("provider: openai", "provider: anthropic").replace(
    "gpt-4o-mini", "claude-haiku-4-5")


def _spec(path, server, provider):
    url = f"{server.url}/v1" if provider == "openai" else server.url
    return apply_overrides(load_curriculum(path), Overrides(base_url=[url]))


def _batch_sizes(server, provider):
    if provider == "openai":
        return [len(b["lines"]) for b in server._oa_batches.values()]
    return [len(b["reqs"]) for b in server._an_batches.values()]


@pytest.fixture
def batch_api():
    with FakeAPI(batch_complete_after=0.2) as server:
        yield server


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_run_end_to_end_at_half_price(batch_api, api_env, write_spec, tmp_path, provider):
    path = write_spec(SMALL_SPEC if provider == "openai" else ANTHROPIC_SPEC)
    spec = _spec(path, batch_api, provider)
    result = run_curriculum(spec, out_dir=tmp_path / "b", batch=True, poll_interval=0.05)
    assert result.records == 6
    assert batch_api.batches_created == 1 and _batch_sizes(batch_api, provider) == [6]
    assert batch_api.count("/v1/chat/completions") == batch_api.count("/v1/messages") == 0
    records = list(iter_records(tmp_path / "b"))
    assert all(r["provenance"]["batch_id"].startswith("tbg-") for r in records)
    # half the published price of the usage the server reported (USD per million tokens)
    published = {"gpt-4o-mini": (0.15, 0.60), "claude-haiku-4-5": (1.00, 5.00)}[spec.model.name]
    usage_in = sum(r["provenance"]["usage"]["input"] for r in records)
    usage_out = sum(r["provenance"]["usage"]["output"] for r in records)
    full = (usage_in * published[0] + usage_out * published[1]) / 1e6
    assert usage_out > 0
    assert sum(r["provenance"]["cost_usd"] for r in records) == pytest.approx(full / 2, rel=1e-6)
    # a rerun in batch mode submits nothing
    again = run_curriculum(spec, out_dir=tmp_path / "b", batch=True, poll_interval=0.05)
    assert again.stats.cached == 6 and batch_api.batches_created == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_expired_batch_keeps_partial_results_and_resubmits_only_the_rest(
    batch_api, api_env, write_spec, tmp_path, provider
):
    path = write_spec(SMALL_SPEC if provider == "openai" else ANTHROPIC_SPEC)
    batch_api.expire_next_batch(2)
    result = run_curriculum(_spec(path, batch_api, provider), out_dir=tmp_path / "b",
                            batch=True, poll_interval=0.05)
    assert result.records == 6
    assert _batch_sizes(batch_api, provider) == [6, 4]
    with RunStore(tmp_path / "b" / "run.sqlite") as store:
        states = [b["status"] for b in store.batches()]
    assert states == ["collected", "collected"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_crash_between_submit_and_record_does_not_submit_twice(
    batch_api, api_env, write_spec, tmp_path, monkeypatch, provider
):
    path = write_spec(SMALL_SPEC if provider == "openai" else ANTHROPIC_SPEC)
    spec = _spec(path, batch_api, provider)
    restore = _crash_after_submit(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_curriculum(spec, out_dir=tmp_path / "b", batch=True, poll_interval=0.05)
    assert batch_api.batches_created == 1
    restore()
    result = run_curriculum(spec, out_dir=tmp_path / "b", batch=True, poll_interval=0.05)
    assert result.records == 6
    assert batch_api.batches_created == 1  # found (metadata / its tag), not resubmitted


def test_batch_budget_is_committed_at_submission(batch_api, api_env, write_spec, tmp_path):
    from textbook_gen.errors import BudgetExceeded

    spec = apply_overrides(load_curriculum(write_spec()),
                           Overrides(base_url=[f"{batch_api.url}/v1"], max_cost_usd=0.0002))
    with pytest.raises(BudgetExceeded):
        run_curriculum(spec, out_dir=tmp_path / "b", batch=True, poll_interval=0.05)
    # the worst case of a request here is ~$0.00006 at batch price: only some were submitted
    submitted = sum(_batch_sizes(batch_api, "openai"))
    assert 1 <= submitted < 6
    with RunStore(tmp_path / "b" / "run.sqlite") as store:
        assert store.totals()["responses"] == submitted  # what was paid for is collected
        assert store.totals()["cost_usd"] <= 0.0002


def test_batches_command_shows_state(batch_api, api_env, write_spec, tmp_path):
    path = write_spec()
    out = tmp_path / "b"
    run_curriculum(_spec(path, batch_api, "openai"), out_dir=out, batch=True, poll_interval=0.05)
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "batches", str(out)],
                          capture_output=True, text=True, timeout=60,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "collected" in proc.stdout and "completed" in proc.stdout and "tbg-" in proc.stdout


def test_local_provider_has_no_batch_mode(write_spec, tmp_path):
    path = write_spec(SMALL_SPEC.replace("provider: openai", "provider: local").replace(
        "gpt-4o-mini", "smollm2-135m-instruct"))
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "run", str(path), "--batch",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "no batch API" in proc.stderr


def _crash_after_submit(monkeypatch):
    """update_batch raises as the provider's id is about to be recorded: a crash between
    the provider's answer and the store's write."""
    from textbook_gen import store as store_module

    real = store_module.RunStore.update_batch

    def crash(self, batch_id, *, status, remote_id=None, detail=None):
        if status == "submitted" and remote_id:
            raise KeyboardInterrupt("simulated crash right after the provider accepted it")
        return real(self, batch_id, status=status, remote_id=remote_id, detail=detail)

    monkeypatch.setattr(store_module.RunStore, "update_batch", crash)
    return lambda: monkeypatch.setattr(store_module.RunStore, "update_batch", real)


def _crashed_after_submit(spec, out, monkeypatch) -> None:
    """A batch run that crashed right after the provider accepted its batch."""
    restore = _crash_after_submit(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_curriculum(spec, out_dir=out, batch=True, poll_interval=0.05)
    restore()


def test_anthropic_recovery_takes_our_batch_not_another_of_the_same_size(
    batch_api, api_env, write_spec, tmp_path, monkeypatch
):
    import anthropic

    spec = _spec(write_spec(ANTHROPIC_SPEC), batch_api, "anthropic")
    _crashed_after_submit(spec, tmp_path / "b", monkeypatch)
    ours = next(iter(batch_api._an_batches))
    # another run on the account submits a batch of the same size just after ours
    other = anthropic.Anthropic(api_key="sk-test", base_url=batch_api.url)
    other.messages.batches.create(requests=[
        {"custom_id": f"other-{i}", "params": {"model": "claude-haiku-4-5", "max_tokens": 50,
                                               "messages": [{"role": "user", "content": "hi"}]}}
        for i in range(6)])
    result = run_curriculum(spec, out_dir=tmp_path / "b", batch=True, poll_interval=0.05)
    assert result.records == 6
    assert batch_api.batches_created == 2  # ours adopted, nothing submitted again
    with RunStore(tmp_path / "b" / "run.sqlite") as store:
        assert [b["remote_id"] for b in store.batches()] == [ours]


def test_anthropic_recovery_finds_our_batch_when_the_local_clock_was_ahead(
    batch_api, api_env, write_spec, tmp_path, monkeypatch
):
    import sqlite3

    spec = _spec(write_spec(ANTHROPIC_SPEC), batch_api, "anthropic")
    _crashed_after_submit(spec, tmp_path / "b", monkeypatch)
    db = sqlite3.connect(tmp_path / "b" / "run.sqlite")
    with db:  # the batch was recorded by a clock an hour ahead of the provider's
        db.execute("UPDATE batches SET created_at = created_at + 3600")
    db.close()
    result = run_curriculum(spec, out_dir=tmp_path / "b", batch=True, poll_interval=0.05)
    assert result.records == 6 and batch_api.batches_created == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_network_error_while_polling_is_one_line_and_a_resumable_stop(
    api_env, write_spec, tmp_path, provider
):
    import threading

    path = write_spec(SMALL_SPEC if provider == "openai" else ANTHROPIC_SPEC)
    server = FakeAPI(batch_complete_after=3600).start()
    spec = _spec(path, server, provider)
    stopper = threading.Thread(target=lambda: (
        _wait_until(lambda: server.batches_created == 1), server.stop()))
    stopper.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "textbook_gen", "run", str(path), "--batch", "--out",
         str(tmp_path / "b"), "--base-url", spec.model.base_url[0], "--quiet",
         "--poll-interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=240)
    stopper.join()
    assert proc.returncode == 1, err
    assert "cannot check batch" in err and "run the same command again" in err
    assert "Traceback" not in err and "bug" not in err and len(err.strip().splitlines()) == 1
    with RunStore(tmp_path / "b" / "run.sqlite") as store:
        (b,) = store.batches()
    assert b["status"] == "submitted" and b["remote_id"]  # a rerun collects it


def _wait_until(predicate):
    from conftest import wait_for

    wait_for(predicate)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_batch_answer_billed_without_text_is_charged(api_env, write_spec, tmp_path, provider):
    with FakeAPI(batch_complete_after=0.1, responder=lambda body: "") as server:
        path = write_spec(SMALL_SPEC if provider == "openai" else ANTHROPIC_SPEC)
        result = run_curriculum(_spec(path, server, provider), out_dir=tmp_path / "b",
                                batch=True, poll_interval=0.05)
    assert result.records == 0 and len(result.failed) == 6
    assert {f[1] for f in result.failed} == {"empty"}
    with RunStore(tmp_path / "b" / "run.sqlite") as store:
        billed = store.db.execute("SELECT SUM(input_tokens), SUM(cost_usd) FROM responses"
                                  " WHERE status = 'failed'").fetchone()
    published = {"openai": 0.15, "anthropic": 1.00}[provider]  # input, USD per million
    assert billed[0] > 0
    assert billed[1] == pytest.approx(billed[0] * published / 1e6 / 2)  # at batch price
    assert result.ledger.spent_usd == pytest.approx(billed[1])


def test_a_request_no_batch_processed_releases_its_hold(batch_api, api_env, write_spec,
                                                        tmp_path):
    from textbook_gen.batch import MAX_SUBMISSIONS

    batch_api.expire_next_batch(0, times=MAX_SUBMISSIONS)
    spec = apply_overrides(load_curriculum(write_spec()),
                           Overrides(base_url=[f"{batch_api.url}/v1"], max_cost_usd=1.0))
    result = run_curriculum(spec, out_dir=tmp_path / "b", batch=True, poll_interval=0.05)
    assert {f[1] for f in result.failed} == {"batch_expired"} and len(result.failed) == 6
    assert result.ledger.reserved_usd == pytest.approx(0.0)
    assert result.ledger.reserved_tokens == 0


def test_a_batch_request_that_errored_unbilled_leaves_the_cost_known(tmp_path):
    """A request the provider rejected inside a batch (billed nothing) is a failure that
    cost $0, not one of unknown cost: the run's spend stays known."""
    import asyncio

    from textbook_gen.batch import BatchRunner
    from textbook_gen.errors import ProviderError
    from textbook_gen.providers import Request
    from textbook_gen.tokens import PRICES

    req = Request.build("openai", "gpt-4o-mini", [("user", "hi")], {"max_tokens": 5})

    class Rejecting:  # the backend's results: one row, errored, no usage
        max_requests = 100

        async def results(self, remote_id):
            yield req.key, ProviderError("invalid request", kind="batch_errored")

    with RunStore(tmp_path / "run.sqlite") as store:
        runner = BatchRunner(Rejecting(), store, PRICES["gpt-4o-mini"])
        asyncio.run(runner._collect({"id": "tbg-1", "remote_id": "b1", "keys": [req.key]},
                                    {req.key: req}))
        store.commit()
        assert store.get_response(req.key).cost == 0.0
        assert store.totals()["cost_usd"] == 0.0
