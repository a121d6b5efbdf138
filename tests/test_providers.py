"""OpenAI and Anthropic providers through the real SDKs against the loopback wire-format server."""

from __future__ import annotations

import asyncio
from datetime import UTC

import pytest

from textbook_gen.errors import ConfigError, FatalProviderError, ProviderError
from textbook_gen.providers import provider_class
from textbook_gen.providers.base import Request
from textbook_gen.spec import ModelSettings

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


def _provider(name: str, url: str):
    base = f"{url}/v1" if name == "openai" else url
    settings = ModelSettings(provider=name, name=MODELS[name], base_url=[base])
    return provider_class(name)(settings, timeout=10, base_url=base)


def _request(name: str, text: str = "Explain fractions.", max_tokens: int = 300) -> Request:
    return Request.build(name, MODELS[name], [("system", "Be clear."), ("user", text)],
                         {"max_tokens": max_tokens, "temperature": 0.7, "seed": 3})


def _complete(provider, req):
    async def go():
        try:
            return await provider.complete(req)
        finally:
            await provider.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_answer_is_parsed_with_usage_and_ids(fake_api, name):
    resp = _complete(_provider(name, fake_api.url), _request(name))
    assert len(resp.text.split()) > 20
    assert resp.finish_reason == "stop"
    assert resp.input_tokens > 0 and resp.output_tokens > 0
    assert resp.response_id
    assert resp.rate_limits is not None and resp.rate_limits.limit_requests
    body = fake_api.generation_bodies()[0]
    assert body["model"] == MODELS[name] and body["max_tokens"] == 300
    if name == "anthropic":
        assert body["system"] == "Be clear." and body["messages"][0]["role"] == "user"
    else:
        assert body["messages"][0] == {"role": "system", "content": "Be clear."}
        assert body["seed"] == 3


@pytest.mark.parametrize("name", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("fault", "retryable", "fatal", "kind"),
    [
        ("429", True, False, "rate_limited"),
        ("500", True, False, "http_500"),
        ("529", True, False, "http_529"),
        ("drop", True, False, "connection"),
        ("401", False, True, "http_401"),
        ("404", False, True, "http_404"),
        ("400", False, False, "http_400"),
        ("422", False, False, "http_422"),
        ("nonjson", True, False, "bad_body"),  # a proxy's page: worth another try
        ("empty", False, False, "empty"),
    ],
)
def test_faults_map_to_retryable_or_fatal_errors(fake_api, name, fault, retryable, fatal, kind):
    fake_api.script(fault)
    with pytest.raises(ProviderError) as info:
        _complete(_provider(name, fake_api.url), _request(name))
    err = info.value
    assert err.retryable is retryable
    assert isinstance(err, FatalProviderError) is fatal
    assert err.kind == kind
    if fault == "429":
        assert err.retry_after == 1.0
    assert fake_api.count() == 1  # the SDK itself never retries: the engine decides


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_truncated_and_refused_answers_are_normalised(fake_api, name):
    fake_api.script("truncate", "refusal")
    provider = _provider(name, fake_api.url)

    async def go():
        try:
            return [await provider.complete(_request(name, f"q{i}")) for i in range(2)]
        finally:
            await provider.aclose()

    truncated, refused = asyncio.run(go())
    assert truncated.finish_reason == "length"
    assert refused.finish_reason in ("refusal", "content_filter")


def test_retry_after_http_date_and_ms_are_honoured():
    from email.utils import formatdate

    from textbook_gen.providers.base import parse_retry_after

    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    import time

    later = parse_retry_after({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert 25 < later <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None


@pytest.mark.parametrize(("name", "env"), [("openai", "OPENAI_API_KEY"),
                                            ("anthropic", "ANTHROPIC_API_KEY")])
def test_missing_key_is_a_clear_error(monkeypatch, name, env):
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(ConfigError, match=f"export {env}="):
        provider_class(name).check_key(ModelSettings(provider=name, name=MODELS[name]))


def test_rate_limit_reset_headers_are_parsed():
    from datetime import datetime, timedelta

    from textbook_gen.providers.anthropic import _limits as anthropic_limits
    from textbook_gen.providers.base import parse_reset
    from textbook_gen.providers.openai import _limits as openai_limits

    assert parse_reset("1s") == 1.0 and parse_reset("6m0s") == 360.0
    assert parse_reset("20ms") == 0.02 and parse_reset("1h2m3.5s") == 3723.5
    assert parse_reset("soon") is None
    later = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    assert 28 < parse_reset(later) <= 30
    spent = openai_limits({"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "0",
                           "x-ratelimit-reset-requests": "2s", "x-ratelimit-limit-tokens": "100",
                           "x-ratelimit-remaining-tokens": "50", "x-ratelimit-reset-tokens": "9s"})
    assert spent.reset_s == 2.0  # only the exhausted limit counts
    room = openai_limits({"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "3",
                          "x-ratelimit-reset-requests": "2s"})
    assert room.reset_s is None
    a = anthropic_limits({"anthropic-ratelimit-requests-limit": "5",
                          "anthropic-ratelimit-requests-remaining": "0",
                          "anthropic-ratelimit-requests-reset": later})
    assert 28 < a.reset_s <= 30


def test_limiter_holds_requests_until_an_exhausted_limit_resets(monkeypatch):
    from textbook_gen import ratelimit

    clock = [1000.0]
    waits: list[float] = []

    async def sleep(seconds):  # a fake clock: no wall-clock time in the test
        waits.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(ratelimit.asyncio, "sleep", sleep)
    limiter = ratelimit.RateLimiter()
    assert not limiter.active
    limiter.hold(30.0)
    asyncio.run(limiter.acquire(10, 10))
    assert sum(waits) >= 30.0  # it waited out the hold before letting the request go
    waits.clear()
    asyncio.run(limiter.acquire(10, 10))
    assert sum(waits) == 0  # and after the reset, nothing holds it
