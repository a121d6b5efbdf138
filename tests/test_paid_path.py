"""The one paid path at its edges: what is billed is charged, the cap holds for any tokenizer
and across invocations, unknown prices stay unknown, identical requests in flight are paid
once, retries pass the rate limiter, a dead endpoint stops the run, a failing judge stops it."""

from __future__ import annotations

import asyncio
import json
import math
import socket

import pytest
from conftest import SMALL_SPEC

from textbook_gen.errors import BudgetExceeded, FatalProviderError
from textbook_gen.run import Overrides, apply_overrides, run_curriculum
from textbook_gen.spec import load_curriculum
from textbook_gen.store import RunStore
from textbook_gen.tokens import PRICES, count_tokens, price_for

MINI = PRICES["gpt-4o-mini"]
EIGHT_JOBS = SMALL_SPEC.replace("[counting, {name: fractions, weight: 2}]",
                                "[counting, fractions, decimals, percentages]")


def _run(path, url, tmp_path, *, out="out", anthropic=False, limit=None, **over):
    base = url if anthropic else f"{url}/v1"
    spec = apply_overrides(load_curriculum(path), Overrides(base_url=[base], **over))
    return run_curriculum(spec, out_dir=tmp_path / out, retry_base_delay=0.01, limit=limit)


def _spent(tmp_path, out="out"):
    with RunStore(tmp_path / out / "run.sqlite") as store:
        return store.totals()


def _billed(api, price, anthropic=False):
    """What the server billed: the usage it reported for every answer it gave."""
    total = 0.0
    for rec in api.requests:
        if rec.path in ("/v1/chat/completions", "/v1/messages") and rec.status == 200:
            u = rec.usage
            total += price.cost(u[0], u[1])
    return total


ANTHROPIC_SPEC = EIGHT_JOBS.replace("provider: openai", "provider: anthropic").replace(
    "name: gpt-4o-mini", "name: claude-haiku-4-5")


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
def test_an_empty_answer_that_was_billed_is_charged_and_the_cap_holds(
        fake_api, api_env, write_spec, tmp_path, anthropic):
    """A reasoning model that spends max_tokens thinking returns no text but bills them all."""
    spec = ANTHROPIC_SPEC if anthropic else EIGHT_JOBS
    price = PRICES["claude-haiku-4-5"] if anthropic else MINI
    fake_api.script(*["empty_billed"] * 40)
    one = price.cost(60, 200)  # about one call's bill: the cap is under three of them
    with pytest.raises(BudgetExceeded):
        _run(write_spec(spec), fake_api.url, tmp_path, anthropic=anthropic,
             max_cost_usd=round(2.5 * one, 8))
    billed = _billed(fake_api, price)
    assert billed > 0
    assert billed <= 2.5 * one + 1e-12  # the cap held
    assert _spent(tmp_path)["cost_usd"] == pytest.approx(billed, abs=1e-6)  # the store knows it
    with RunStore(tmp_path / "out" / "run.sqlite") as store:
        kinds = {r[0] for r in store.db.execute("SELECT error_kind FROM responses")}
        assert kinds == {"empty"}


def test_a_tokenizer_that_counts_more_than_cl100k_cannot_push_spend_past_the_cap(
        api_env, write_spec, tmp_path):
    from fakeapi import FakeAPI

    def claude_like(body):  # 1.3x what cl100k counts, as Claude's tokenizer can
        text = " ".join(m["content"] for m in body["messages"])
        return math.ceil(1.3 * (count_tokens(text) + 4 * len(body["messages"])))

    spec = EIGHT_JOBS.replace("max_tokens: 200", "max_tokens: 5").replace(
        "curation:", "engine: {concurrency: 4}\ncuration:")
    with FakeAPI(input_tokens=claude_like) as api:
        # the cap fits a few calls as cl100k counts them, fewer as the provider bills them
        probe = _run(write_spec(spec), api.url, tmp_path, out="probe", limit=1)
        per_call = _billed(api, MINI) / max(1, probe.stats.succeeded)
        api.requests.clear()
        cap = round(3.5 * per_call, 9)
        with pytest.raises(BudgetExceeded):
            _run(write_spec(spec), api.url, tmp_path, max_cost_usd=cap)
        assert 0 < _billed(api, MINI) <= cap


def test_the_cap_is_the_run_directorys_across_invocations(fake_api, api_env, write_spec,
                                                          tmp_path):
    path = write_spec(EIGHT_JOBS)
    cap = round(MINI.cost(60, 200) * 3, 8)
    with pytest.raises(BudgetExceeded):
        _run(path, fake_api.url, tmp_path, max_cost_usd=cap)
    first = fake_api.count()
    with pytest.raises(BudgetExceeded) as e:
        _run(path, fake_api.url, tmp_path, max_cost_usd=cap)
    assert _spent(tmp_path)["cost_usd"] <= cap
    assert fake_api.count() - first <= 1  # the second invocation had (almost) nothing left
    assert "earlier runs of this directory" in str(e.value)
    result = _run(path, fake_api.url, tmp_path, max_cost_usd=1.0)  # raising the cap continues
    assert result.records == 8


@pytest.mark.parametrize("model", ["gpt-5-pro", "o4-mini-deep-research", "gpt-4o-made-up",
                                   "claude-sonnet-4-5-turbo"])
def test_a_name_that_only_starts_like_a_known_model_has_no_price(model):
    assert price_for("openai", model) is None


@pytest.mark.parametrize(("model", "known"), [
    ("gpt-4o-2024-08-06", "gpt-4o"), ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"), ("gpt-4.1-latest", "gpt-4.1")])
def test_a_dated_snapshot_or_latest_alias_is_priced_as_its_model(model, known):
    assert price_for("openai", model) == PRICES[known]


def test_max_cost_refuses_a_model_without_a_price(api_env, write_spec, tmp_path, fake_api):
    from textbook_gen.errors import ConfigError

    path = write_spec(EIGHT_JOBS.replace("name: gpt-4o-mini", "name: gpt-5-pro"))
    with pytest.raises(ConfigError, match="prices:"):
        _run(path, fake_api.url, tmp_path, max_cost_usd=1.0)
    assert fake_api.count() == 0


def test_an_unknown_cost_is_never_shown_as_zero(fake_api, api_env, write_spec, tmp_path):
    from conftest import read_kept

    path = write_spec(EIGHT_JOBS.replace("name: gpt-4o-mini", "name: gpt-5-pro"))
    result = _run(path, fake_api.url, tmp_path)
    assert result.records == 8
    assert {r["provenance"]["cost_usd"] for r in read_kept(tmp_path / "out")} == {None}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["usage"]["cost_usd"] is None
    assert manifest["this_run"]["spent_usd"] is None
    assert manifest["this_run"]["stages"]["generate"]["cost_usd"] is None


def test_an_answer_from_another_model_is_priced_as_asked_and_warned(api_env, write_spec,
                                                                   tmp_path):
    from conftest import read_kept
    from fakeapi import FakeAPI

    with FakeAPI(answer_model="gpt-4o") as api:
        _run(write_spec(EIGHT_JOBS), api.url, tmp_path)
    log = (tmp_path / "out" / "run.log").read_text()
    assert "asked for model 'gpt-4o-mini', the server answered as 'gpt-4o'" in log
    assert log.count("the server answered as") == 1  # once, not per answer
    for r in read_kept(tmp_path / "out"):
        u = r["provenance"]["usage"]
        assert r["provenance"]["cost_usd"] == pytest.approx(MINI.cost(u["input"], u["output"]))


def test_a_dated_snapshot_in_the_answer_is_not_warned_about(api_env, write_spec, tmp_path):
    from fakeapi import FakeAPI

    with FakeAPI(answer_model="gpt-4o-mini-2024-07-18") as api:
        _run(write_spec(EIGHT_JOBS), api.url, tmp_path)
    log = tmp_path / "out" / "run.log"
    assert not log.exists() or "answered as" not in log.read_text()


def test_identical_requests_in_flight_are_sent_once(api_env, tmp_path):
    from fakeapi import FakeAPI

    from textbook_gen.engine import Engine
    from textbook_gen.generator import WorkItem
    from textbook_gen.providers import Request
    from textbook_gen.providers.openai import OpenAIProvider
    from textbook_gen.spec import EngineSettings, ModelSettings

    req = Request.build("openai", "gpt-4o-mini", [("user", "Write a page on fractions.")],
                        {"max_tokens": 50, "temperature": 0.0, "seed": 0})
    items = [WorkItem(f"judge:doc{i}", req) for i in range(3)]

    async def main(url):
        provider = OpenAIProvider(ModelSettings(provider="openai", name="gpt-4o-mini"),
                                  base_url=f"{url}/v1")
        with RunStore(tmp_path / "run.sqlite") as store:
            engine = Engine([provider], store, EngineSettings(concurrency=3), MINI)
            try:
                stats = await engine.run(iter(items), len(items))
            finally:
                await engine.aclose()
            keys = {store.job_key(i.job_id) for i in items}
        return stats, keys

    with FakeAPI(latency=0.3) as api:  # all three are in flight together
        stats, keys = asyncio.run(main(api.url))
        assert api.count() == 1
    assert keys == {req.key} and stats.done == 3 and stats.succeeded == 1


def test_retries_wait_for_the_rate_limiter(fake_api, api_env, write_spec, tmp_path):
    spec = SMALL_SPEC.replace("[children, adults]", "[children]").replace(
        "[counting, {name: fractions, weight: 2}]", "[counting]").replace(
        "curation:", "engine: {rpm: 2, max_retries: 5}\ncuration:")
    fake_api.script("500", "500", "500")
    path = write_spec(spec)
    spec_ = apply_overrides(load_curriculum(path), Overrides(base_url=[f"{fake_api.url}/v1"]))
    run_curriculum(spec_, out_dir=tmp_path / "out", retry_base_delay=0.001, rate_window=2.0)
    arrivals = sorted(r.at for r in fake_api.requests if r.path == "/v1/chat/completions")
    assert len(arrivals) == 4
    # rpm 2 over a 2 s window: the third attempt cannot leave within a window of the first
    assert sum(t < arrivals[0] + 1.0 for t in arrivals) <= 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_endpoint_stops_the_run_naming_the_url_and_the_rerun_resumes(
        api_env, write_spec, tmp_path):
    from fakeapi import FakeAPI

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    spec = EIGHT_JOBS.replace("[children, adults]", "[children, adults, teachers]").replace(
        "subjects:", "engine: {concurrency: 4}\nsubjects:")
    path = write_spec(spec)
    with pytest.raises(FatalProviderError) as e:
        _run(path, url, tmp_path)
    message = str(e.value)
    assert f"127.0.0.1:{port}" in message and "run the same command again" in message
    with FakeAPI(port=port) as api:
        result = _run(path, url, tmp_path)
        assert result.records == 12 and not result.failed
        assert api.count() == 12


JUDGED = EIGHT_JOBS.replace("curation:\n  enabled: false", """curation:
  min_tokens: 1
  judge: {enabled: true}""").replace("subjects:", "engine: {concurrency: 2, max_retries: 1}\nsubjects:")


def _judge_fails(body):
    if "Educational score" in body["messages"][-1]["content"]:
        raise RuntimeError("judge model overloaded")
    return None


def test_a_judge_whose_calls_all_fail_stops_the_run_with_the_providers_reason(
        api_env, write_spec, tmp_path):
    from fakeapi import FakeAPI

    with FakeAPI(responder=_judge_fails) as api:
        with pytest.raises(FatalProviderError) as e:
            _run(write_spec(JUDGED), api.url, tmp_path)
        judged = [r for r in api.requests if isinstance(r.body, dict)
                  and "Educational score" in json.dumps(r.body)]
    assert "judge" in str(e.value) and "judge model overloaded" in str(e.value)
    # it stopped after a few failures, not after trying every one of the 8 documents
    assert len(judged) < 8 * 2


def _judge_failing_on_its_first_document():
    """A responder whose judge fails (HTTP 500) on the first document it is asked about, and
    only on it; and the list that will hold that judge prompt."""
    failing: list[str] = []

    def responder(body):
        prompt = body["messages"][-1]["content"]
        if "Educational score" in prompt:
            failing[:] = failing or [prompt]
            if prompt == failing[0]:
                raise RuntimeError("judge model overloaded")
            return "Clear and correct. Educational score: 4"
        return None

    return failing, responder


def test_a_judge_call_that_failed_is_a_failed_job(api_env, write_spec, tmp_path):
    from conftest import read_rejects
    from fakeapi import FakeAPI

    failing, one_fails = _judge_failing_on_its_first_document()

    with FakeAPI(responder=one_fails) as api:
        result = _run(write_spec(JUDGED.replace("min_tokens: 1", "min_tokens: 1\n  dedup: {near: false}")),
                      api.url, tmp_path)
    judge_failures = [f for f in result.failed if f[0].startswith("judge:")]
    assert len(judge_failures) == 1 and judge_failures[0][1] == "judge_failed"
    rejects = [r for r in read_rejects(tmp_path / "out") if r["rejected"]["stage"] == "judge"]
    assert [r["rejected"]["reason"] for r in rejects] == ["judge_failed"]


def test_a_run_that_ends_on_an_error_records_how_it_ended(fake_api, api_env, write_spec,
                                                          tmp_path):
    fake_api.script("401")
    with pytest.raises(FatalProviderError):
        _run(write_spec(EIGHT_JOBS), fake_api.url, tmp_path)
    with RunStore(tmp_path / "out" / "run.sqlite") as store:
        statuses = [r[0] for r in store.db.execute("SELECT status FROM runs")]
    assert statuses == ["error: FatalProviderError"]


def test_a_failed_judge_request_is_not_sent_again_by_later_rounds_of_the_loop(
        api_env, write_spec, tmp_path):
    from fakeapi import FakeAPI

    failing, one_fails = _judge_failing_on_its_first_document()

    looped = JUDGED.replace("per: [topic, audience]}",
                            "per: [topic, audience], target_kept: 1, max_samples: 3}")
    with FakeAPI(responder=one_fails) as api:
        result = _run(write_spec(looped), api.url, tmp_path)
        tries = [r for r in api.requests if isinstance(r.body, dict)
                 and r.body["messages"][-1]["content"] == failing[0]]
    # the loop went round again: the failing document's cell asked for more samples
    assert any(row["samples"] > 1 for row in result.manifest["coverage"]["grid"])
    assert len(tries) == 2  # its attempts (max_retries 1) in round 1, none in later rounds
