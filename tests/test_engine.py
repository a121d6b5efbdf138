"""The engine under faults: what is retried, what is recorded, what stops the run, and budgets."""

from __future__ import annotations

import pytest
from conftest import SMALL_SPEC

from textbook_gen.errors import BudgetExceeded, FatalProviderError
from textbook_gen.run import Overrides, apply_overrides, run_curriculum
from textbook_gen.spec import load_curriculum
from textbook_gen.store import RunStore

ONE_JOB = SMALL_SPEC.replace("[children, adults]", "[children]").replace(
    "[counting, {name: fractions, weight: 2}]", "[counting]")


def _run(path, url, tmp_path, **over):
    spec = apply_overrides(load_curriculum(path), Overrides(base_url=[f"{url}/v1"], **over))
    return run_curriculum(spec, out_dir=tmp_path / "out", retry_base_delay=0.01)


@pytest.mark.parametrize("fault", [
    {"status": 429, "headers": {"retry-after-ms": "30"}}, "500", "503", "529", "drop",
    "nonjson",  # a 200 whose body is a proxy's HTML page
])
def test_transient_faults_are_retried_until_success(fake_api, api_env, write_spec, tmp_path,
                                                    fault):
    fake_api.script(fault, fault)
    result = _run(write_spec(ONE_JOB), fake_api.url, tmp_path)
    assert fake_api.count() == 3  # two faults, then the answer
    assert result.records == 1 and result.stats.retries == 2


def test_retry_after_seconds_is_honoured(fake_api, api_env, write_spec, tmp_path, monkeypatch):
    import asyncio

    from textbook_gen import engine

    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds, *a, **kw):
        waits.append(seconds)
        return await real_sleep(0)

    monkeypatch.setattr(engine.asyncio, "sleep", sleep)
    fake_api.script({"status": 429, "headers": {"retry-after": "7"}})
    _run(write_spec(ONE_JOB), fake_api.url, tmp_path)
    assert fake_api.count() == 2
    assert waits and max(waits) >= 7.0  # the server's Retry-After, not our short base delay


def test_retries_give_up_and_record_the_reason(fake_api, api_env, write_spec, tmp_path):
    path = write_spec(ONE_JOB, extra="engine: {max_retries: 2}\n")
    fake_api.script("500", "500", "500")
    result = _run(path, fake_api.url, tmp_path)
    assert fake_api.count() == 3
    assert result.records == 0
    assert result.failed[0][1] == "http_500"
    with RunStore(tmp_path / "out" / "run.sqlite") as store:
        assert store.totals()["failed"] == 1
    # a rerun tries the failed job again; it was never paid for
    result = _run(path, fake_api.url, tmp_path)
    assert result.records == 1 and fake_api.count() == 4


@pytest.mark.parametrize("fault", ["empty", "400", "422"])
def test_bad_bodies_and_client_errors_are_recorded_not_retried(fake_api, api_env, write_spec,
                                                               tmp_path, fault):
    fake_api.script(fault)
    result = _run(write_spec(ONE_JOB), fake_api.url, tmp_path)
    assert fake_api.count() == 1
    assert result.records == 0 and len(result.failed) == 1


def test_non_json_answers_are_retried_a_bounded_number_of_times(fake_api, api_env, write_spec,
                                                                tmp_path):
    fake_api.script("nonjson", "nonjson", "nonjson")
    result = _run(write_spec(ONE_JOB, extra="engine: {max_retries: 2}\n"), fake_api.url,
                  tmp_path)
    assert fake_api.count() == 3
    assert [f[1] for f in result.failed] == ["bad_body"]


def test_truncation_is_stored_not_resent(fake_api, api_env, write_spec, tmp_path):
    path = write_spec(ONE_JOB)
    fake_api.script("truncate")
    result = _run(path, fake_api.url, tmp_path)
    assert result.stats.truncated == 1 and fake_api.count() == 1
    _run(path, fake_api.url, tmp_path)
    assert fake_api.count() == 1  # paid answer kept, never re-sent with the same settings


def test_truncation_retried_once_with_more_room_when_asked(fake_api, api_env, write_spec,
                                                           tmp_path):
    path = write_spec(ONE_JOB, extra="engine: {retry_truncated: true}\n")
    fake_api.script("truncate", "truncate")
    result = _run(path, fake_api.url, tmp_path)
    bodies = fake_api.generation_bodies()
    assert [b["max_tokens"] for b in bodies] == [200, 400]  # once, not again
    assert result.stats.truncated == 2 and result.records == 1


def test_refusal_is_recorded_and_not_retried(fake_api, api_env, write_spec, tmp_path):
    fake_api.script("refusal")
    result = _run(write_spec(ONE_JOB), fake_api.url, tmp_path)
    assert fake_api.count() == 1 and result.stats.refused == 1


@pytest.mark.parametrize("fault", ["401", "404"])
def test_auth_or_unknown_model_stops_the_run_early(fake_api, api_env, write_spec, tmp_path,
                                                   fault):
    fake_api.script(*[fault] * 50)
    path = write_spec(SMALL_SPEC.replace("[counting, {name: fractions, weight: 2}]",
                                         "[" + ", ".join(f"t{i}" for i in range(20)) + "]"),
                      extra="engine: {concurrency: 2}\n")
    with pytest.raises(FatalProviderError):
        _run(path, fake_api.url, tmp_path)
    assert fake_api.count() <= 2  # not one request per job


def test_budget_cap_stops_before_crossing(fake_api, api_env, write_spec, tmp_path):
    # gpt-4o-mini: a request with max_tokens 200 may cost up to ~$0.00013
    path = write_spec(extra="engine: {concurrency: 1}\n")
    with pytest.raises(BudgetExceeded, match="run the same command again"):
        _run(path, fake_api.url, tmp_path, max_cost_usd=0.0003)
    sent = fake_api.count()
    assert 1 <= sent < 6
    with RunStore(tmp_path / "out" / "run.sqlite") as store:
        assert store.totals()["responses"] == sent
        assert store.totals()["cost_usd"] <= 0.0003
    # raising the cap continues without paying again for what is stored
    result = _run(path, fake_api.url, tmp_path, max_cost_usd=1.0)
    assert fake_api.count() == 6 and result.stats.cached == sent


def test_token_cap(fake_api, api_env, write_spec, tmp_path):
    with pytest.raises(BudgetExceeded):
        _run(write_spec(extra="engine: {concurrency: 1}\n"), fake_api.url, tmp_path,
             max_total_tokens=700)
    assert 1 <= fake_api.count() < 6


def test_concurrency_keeps_many_requests_in_flight(api_env, write_spec, tmp_path):
    from fakeapi import FakeAPI

    topics = "[" + ", ".join(f"t{i}" for i in range(40)) + "]"
    path = write_spec(SMALL_SPEC.replace("[counting, {name: fractions, weight: 2}]", topics),
                      extra="engine: {concurrency: 40}\n")
    with FakeAPI(latency=0.5) as server:
        result = _run(path, server.url, tmp_path)
    assert result.records == 80
    # the server held many requests at once; a serial engine would never exceed 1
    assert server.max_in_flight >= 20


def test_several_endpoints_share_the_load(api_env, write_spec, tmp_path):
    from fakeapi import FakeAPI

    topics = "[" + ", ".join(f"t{i}" for i in range(20)) + "]"
    path = write_spec(SMALL_SPEC.replace("[counting, {name: fractions, weight: 2}]", topics),
                      extra="engine: {concurrency: 8}\n")
    with FakeAPI(latency=0.05) as a, FakeAPI(latency=0.05) as b:
        spec = apply_overrides(load_curriculum(path),
                               Overrides(base_url=[f"{a.url}/v1", f"{b.url}/v1"]))
        result = run_curriculum(spec, out_dir=tmp_path / "o")
        assert result.records == 40
        assert a.count() + b.count() == 40
        assert min(a.count(), b.count()) >= 10  # both replicas did real work


def test_one_replica_down_the_other_carries_on(api_env, write_spec, tmp_path):
    from fakeapi import FakeAPI

    path = write_spec(extra="engine: {concurrency: 2}\n")
    with FakeAPI() as up, FakeAPI() as down:
        down.script(*["503"] * 20)
        spec = apply_overrides(load_curriculum(path),
                               Overrides(base_url=[f"{up.url}/v1", f"{down.url}/v1"]))
        result = run_curriculum(spec, out_dir=tmp_path / "o", retry_base_delay=0.01)
        assert result.records == 6 and not result.failed


@pytest.mark.parametrize("share", [1, 2])
def test_an_engine_takes_its_share_of_the_limits_the_server_reports(api_env, write_spec,
                                                                    tmp_path, share):
    """The server's rate-limit headers give the account's limits; an engine that is one of
    ``share`` senders on that account (a Ray worker) keeps to its part of them."""
    from fakeapi import FakeAPI

    from textbook_gen.generator import WorkItem, drive
    from textbook_gen.ledger import Ledger
    from textbook_gen.progress import Progress
    from textbook_gen.providers.base import Request
    from textbook_gen.run import make_generator

    with FakeAPI(rpm=20, tpm=90_000) as server:
        spec = apply_overrides(load_curriculum(write_spec(ONE_JOB)),
                               Overrides(base_url=[f"{server.url}/v1"]))
        with RunStore(tmp_path / "run.sqlite") as store:
            engine = make_generator(spec, store, Ledger(None, None), batch=False,
                                    retry_base_delay=0.01, rate_window=60.0, poll_interval=1.0,
                                    limit_share=share)
            request = Request.build("openai", "gpt-4o-mini", [("user", "Say hi.")],
                                    {"max_tokens": 20})
            drive(engine, iter([WorkItem("j", request)]), 1, Progress())
    assert engine.limiter.requests.limit == 20 // share
    assert engine.limiter.tokens.limit == 90_000 // share
