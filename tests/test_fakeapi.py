"""The loopback fake API, driven by the real openai and anthropic SDKs."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from fakeapi import FakeAPI, default_text

MSGS = [{"role": "user", "content": "Write a short chapter about fractions for children."}]
OTHER = [{"role": "user", "content": "Something else."}]


# One event loop and one client of each SDK for the whole module: building an SDK client costs
# tens of milliseconds, so each test gets a cheap ``with_options`` copy pointed at its server.
_runner = asyncio.Runner()
_base: dict[str, object] = {}


def run(coro):
    return _runner.run(coro)


@pytest.fixture(scope="module", autouse=True)
def _shared_loop() -> Iterator[None]:
    yield

    async def close() -> None:
        for c in _base.values():
            await c.close()

    _runner.run(close())
    _runner.close()


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    with FakeAPI() as server:
        yield server


def oai(api: FakeAPI, retries: int = 0) -> openai.AsyncOpenAI:
    if "openai" not in _base:
        _base["openai"] = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="x")
    return _base["openai"].with_options(base_url=f"{api.url}/v1", max_retries=retries)


def ant(api: FakeAPI, retries: int = 0) -> anthropic.AsyncAnthropic:
    if "anthropic" not in _base:
        _base["anthropic"] = anthropic.AsyncAnthropic(base_url="http://127.0.0.1:9", api_key="x")
    return _base["anthropic"].with_options(base_url=api.url, max_retries=retries)


async def chat(api: FakeAPI, messages=MSGS, retries: int = 0, **kw):
    c = oai(api, retries)
    return await c.chat.completions.create(model="gpt-4o-mini", messages=messages, **kw)


async def message(api: FakeAPI, messages=MSGS, retries: int = 0, max_tokens: int = 500, **kw):
    c = ant(api, retries)
    return await c.messages.create(model="claude-3-5-haiku-latest", max_tokens=max_tokens,
                                   messages=messages, **kw)


# ----------------------------------------------------------------------------- normal answers

def test_openai_normal_answer(api):
    r = run(chat(api))
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == "gpt-4o-mini"
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    text = choice.message.content
    assert text.startswith("## ") and 90 <= len(text.split()) <= 150
    assert r.usage.prompt_tokens == len(MSGS[0]["content"].split())
    assert r.usage.completion_tokens == len(text.split())
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # deterministic: same request, same text; different request, different text
    assert run(chat(api)).choices[0].message.content == text
    other = run(chat(api, messages=OTHER))
    assert other.choices[0].message.content != text
    assert api.count("/v1/chat/completions") == 3 and api.count() == 3
    assert [b["messages"] for b in api.generation_bodies()] == [MSGS, MSGS, OTHER]


def test_anthropic_normal_answer(api):
    m = run(message(api, system="You write textbooks."))
    assert m.type == "message" and m.id.startswith("msg_") and m.role == "assistant"
    assert m.model == "claude-3-5-haiku-latest"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert len(m.content) == 1 and m.content[0].type == "text"
    assert m.content[0].text.startswith("## ")
    assert m.usage.input_tokens == len(MSGS[0]["content"].split()) + 3
    assert m.usage.output_tokens == len(m.content[0].text.split())
    rec = api.requests[-1]
    assert rec.path == "/v1/messages"
    assert rec.headers.get("x-api-key") == "x" or rec.headers.get("authorization") == "Bearer x"
    assert "anthropic-version" in rec.headers and rec.body["system"] == "You write textbooks."


def test_rate_limit_and_request_id_headers(api):
    async def go():
        c = oai(api)
        r1 = await c.chat.completions.with_raw_response.create(model="m", messages=MSGS)
        c = ant(api)
        r2 = await c.messages.with_raw_response.create(model="m", max_tokens=100, messages=MSGS)
        return r1.headers, r2.headers

    h1, h2 = run(go())
    for k in ("limit-requests", "remaining-requests", "limit-tokens", "remaining-tokens",
              "reset-requests"):
        assert f"x-ratelimit-{k}" in h1
    assert h1["x-request-id"]
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert int(h2[f"anthropic-ratelimit-{kind}-limit"]) > 0
        assert f"anthropic-ratelimit-{kind}-remaining" in h2
    assert h2["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert h2["request-id"]


def test_max_tokens_cuts_the_default_text(api):
    r = run(chat(api, max_tokens=10))
    assert r.choices[0].finish_reason == "length"
    assert len(r.choices[0].message.content.split()) == 10
    m = run(message(api, max_tokens=7))
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 7


def test_responder_supplies_the_text():
    with FakeAPI(responder=lambda body: f"echo {len(body['messages'])} {body['model']}") as api:
        assert run(chat(api)).choices[0].message.content == "echo 1 gpt-4o-mini"
        assert run(message(api)).content[0].text == "echo 1 claude-3-5-haiku-latest"


def test_default_text_is_a_pure_function():
    assert default_text("a") == default_text("a") != default_text("b")


def test_invalid_generation_request_is_a_400(api):
    with pytest.raises(openai.BadRequestError):
        run(chat(api, messages=[]))


# ----------------------------------------------------------------------------- faults

OPENAI_STATUS = [
    ("429", openai.RateLimitError), ("500", openai.InternalServerError),
    ("503", openai.InternalServerError), ("529", openai.InternalServerError),
    ("401", openai.AuthenticationError), ("400", openai.BadRequestError),
    ("404", openai.NotFoundError), ("422", openai.UnprocessableEntityError),
]
ANTHROPIC_STATUS = [
    ("429", anthropic.RateLimitError, "rate_limit_error"),
    ("500", anthropic.InternalServerError, "api_error"),
    ("503", anthropic.InternalServerError, "api_error"),
    ("529", anthropic.OverloadedError, "overloaded_error"),
    ("401", anthropic.AuthenticationError, "authentication_error"),
    ("400", anthropic.BadRequestError, "invalid_request_error"),
    ("404", anthropic.NotFoundError, "not_found_error"),
    ("422", anthropic.UnprocessableEntityError, "invalid_request_error"),
]


@pytest.mark.parametrize(("fault", "exc"), OPENAI_STATUS)
def test_openai_status_faults(api, fault, exc):
    api.script(fault)
    with pytest.raises(exc) as ei:
        run(chat(api))
    err = ei.value
    assert err.status_code == int(fault)
    assert isinstance(err.body, dict) and err.body["message"] and err.body["type"]
    assert err.request_id
    if fault == "429":
        assert err.response.headers["retry-after"] == "1"
    assert api.requests[-1].fault == fault
    run(chat(api))  # the fault was used up: the next request succeeds


@pytest.mark.parametrize(("fault", "exc", "etype"), ANTHROPIC_STATUS)
def test_anthropic_status_faults(api, fault, exc, etype):
    api.script(fault)
    with pytest.raises(exc) as ei:
        run(message(api))
    err = ei.value
    assert err.status_code == int(fault)
    assert err.body["type"] == "error" and err.body["error"]["type"] == etype
    assert err.request_id
    if fault == "429":
        assert err.response.headers["retry-after"] == "1"
    run(message(api))


def test_drop_is_a_connection_error(api):
    api.script("drop", "drop")
    with pytest.raises(openai.APIConnectionError):
        run(chat(api))
    with pytest.raises(anthropic.APIConnectionError):
        run(message(api))
    assert run(chat(api)).choices[0].message.content


def test_nonjson_answer(api):
    """A 200 with an HTML body: the SDKs hand back the bare text instead of a model object."""
    api.script("nonjson", "nonjson")
    assert run(chat(api)) == "<html>oops</html>"
    assert run(message(api)) == "<html>oops</html>"
    assert [r.fault for r in api.requests] == ["nonjson", "nonjson"]


def test_empty_truncate_refusal_openai(api):
    api.script("empty", "truncate", "refusal")
    assert run(chat(api)).choices == []
    cut = run(chat(api, messages=OTHER)).choices[0]
    refused = run(chat(api)).choices[0]
    assert cut.finish_reason == "length"
    assert refused.message.content is None and refused.message.refusal
    normal = run(chat(api, messages=OTHER)).choices[0]
    assert normal.finish_reason == "stop"
    assert len(cut.message.content.split()) < len(normal.message.content.split())
    assert normal.message.content.startswith(cut.message.content)


def test_empty_truncate_refusal_anthropic(api):
    api.script("empty", "truncate", "refusal")
    m = run(message(api))
    assert m.content == [] and m.stop_reason == "end_turn"
    m = run(message(api))
    assert m.stop_reason == "max_tokens" and 0 < m.usage.output_tokens < 80
    m = run(message(api))
    assert m.stop_reason == "refusal"


def test_delay_fault_and_ordering(api):
    api.script({"delay": 0.3}, "500")
    t = time.monotonic()
    run(chat(api))
    assert time.monotonic() - t >= 0.3
    with pytest.raises(openai.InternalServerError):
        run(chat(api))
    assert api.pending_faults == 0
    assert [r.fault for r in api.requests] == ["delay", "500"]


def test_sdk_retries_wait_at_least_the_retry_after_ms_the_server_sent(api):
    api.script({"status": 429, "headers": {"retry-after-ms": "50"}},
               {"status": 503, "headers": {"retry-after-ms": "20"}})
    r = run(chat(api, retries=2))
    assert r.choices[0].finish_reason == "stop"
    assert api.count("/v1/chat/completions") == 3
    arrivals = [q.at for q in api.requests if q.path == "/v1/chat/completions"]
    # lower bounds only: a loaded machine can make the gaps longer, never shorter
    assert arrivals[1] - arrivals[0] >= 0.05 and arrivals[2] - arrivals[1] >= 0.02


def test_http_date_retry_after(api):
    from email.utils import formatdate

    when = formatdate(time.time() + 2, usegmt=True)
    api.script({"status": 429, "headers": {"retry-after": when}})
    with pytest.raises(anthropic.RateLimitError) as ei:
        run(message(api))
    assert ei.value.response.headers["retry-after"].endswith("GMT")


def test_latency_applies_to_every_answer():
    with FakeAPI(latency=0.2) as api:
        async def go():
            c = oai(api)
            t = time.monotonic()
            await asyncio.gather(*[c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": str(i)}]) for i in range(50)])
            return time.monotonic() - t

        dt = run(go())
        assert 0.2 <= dt < 2  # concurrent, not serialized


# ----------------------------------------------------------------------------- rate limits

def test_rpm_limit_rejects_past_the_limit():
    with FakeAPI(rpm=5) as api:
        async def go():
            c = oai(api)
            return await asyncio.gather(*[c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(8)],
                return_exceptions=True)

        res = run(go())
        errs = [r for r in res if isinstance(r, Exception)]
        assert len(errs) == 3 and all(isinstance(e, openai.RateLimitError) for e in errs)
        assert all(1 <= int(e.response.headers["retry-after"]) <= 60 for e in errs)
        assert errs[0].body["code"] == "rate_limit_exceeded"
        assert len(api.accepted_times) == 5
        assert sum(r.rejected for r in api.requests) == 3
        assert len(api.generation_bodies(include_rejected=False)) == 5


def test_tpm_limit_counts_input_plus_max_tokens():
    with FakeAPI(tpm=100) as api:
        msgs = [{"role": "user", "content": "one two three four five"}]  # 5 words
        run(message(api, messages=msgs, max_tokens=40))  # 45
        run(message(api, messages=msgs, max_tokens=40))  # 90
        with pytest.raises(anthropic.RateLimitError) as ei:
            run(message(api, messages=msgs, max_tokens=40))  # 135 > 100
        assert ei.value.body["error"]["type"] == "rate_limit_error"
        assert int(ei.value.response.headers["retry-after"]) >= 59
        run(message(api, messages=msgs, max_tokens=5))  # 100: still fits
        assert [c for _, c in api.accepted_tokens] == [45, 45, 10]
        assert api.requests[2].rejected and not api.requests[3].rejected


# ----------------------------------------------------------------------------- OpenAI batches

def batch_jsonl(n: int) -> bytes:
    return "".join(json.dumps({
        "custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": 300,
                 "messages": [{"role": "user", "content": f"Chapter {i}"}]}}) + "\n"
        for i in range(n)).encode()


async def openai_batch(api: FakeAPI, n: int, polls: int = 50):
    c = oai(api)
    f = await c.files.create(file=("in.jsonl", batch_jsonl(n)), purpose="batch")
    assert f.object == "file" and f.bytes == len(batch_jsonl(n)) and f.purpose == "batch"
    assert (await c.files.retrieve(f.id)).filename == "in.jsonl"
    assert (await c.files.content(f.id)).content == batch_jsonl(n)
    b = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    assert b.status in ("validating", "in_progress") and b.request_counts.total == n
    seen = {b.status}
    for _ in range(polls):
        b = await c.batches.retrieve(b.id)
        seen.add(b.status)
        if b.status in ("completed", "expired", "failed", "cancelled"):
            break
        await asyncio.sleep(0.05)
    out = (await c.files.content(b.output_file_id)).text if b.output_file_id else ""
    err = (await c.files.content(b.error_file_id)).text if b.error_file_id else ""
    return b, seen, [json.loads(x) for x in out.splitlines()], [
        json.loads(x) for x in err.splitlines()]


def test_openai_batch_end_to_end():
    with FakeAPI(batch_complete_after=0.2) as api:
        b, seen, out, err = run(openai_batch(api, 4))
        assert b.status == "completed" and "in_progress" in seen
        assert b.request_counts.completed == 4 and b.request_counts.failed == 0
        assert b.error_file_id is None and b.completed_at
        assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(4)]
        resp = out[0]["response"]
        assert resp["status_code"] == 200 and out[0]["error"] is None
        cc = openai.types.chat.ChatCompletion.model_validate(resp["body"])
        assert cc.choices[0].message.content.startswith("## ")
        assert api.batches_created == 1
        assert api.generation_bodies() == []  # batch work is not a generation request


def test_openai_batch_expired_with_partial_results(api):
    api.expire_next_batch(2)
    b, _, out, err = run(openai_batch(api, 5))
    assert b.status == "expired" and b.expired_at
    assert b.request_counts.completed == 2 and b.request_counts.failed == 3
    assert [o["custom_id"] for o in out] == ["req-0", "req-1"]
    assert [e["custom_id"] for e in err] == ["req-2", "req-3", "req-4"]
    assert all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in err)
    # only that one batch expires
    b2, _, out2, _ = run(openai_batch(api, 2))
    assert b2.status == "completed" and len(out2) == 2 and api.batches_created == 2


def test_openai_batch_cancel_and_missing():
    with FakeAPI(batch_complete_after=30) as api:
        async def go():
            c = oai(api)
            f = await c.files.create(file=("in.jsonl", batch_jsonl(3)), purpose="batch")
            b = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                       completion_window="24h")
            assert (await c.batches.retrieve(b.id)).status == "in_progress"
            assert (await c.batches.cancel(b.id)).status == "cancelling"
            b = await c.batches.retrieve(b.id)
            assert b.status == "cancelled" and b.request_counts.failed == 3
            with pytest.raises(openai.NotFoundError):
                await c.batches.retrieve("batch_nope")

        run(go())


def test_batch_lists_are_newest_first_and_paginate(api):
    async def go():
        c, a = oai(api), ant(api)
        f = await c.files.create(file=("in.jsonl", batch_jsonl(1)), purpose="batch")
        made = [(await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                        completion_window="24h", metadata={"n": str(i)})).id
                for i in range(3)]
        listed = [b async for b in c.batches.list(limit=2)]
        assert [b.id for b in listed] == made[::-1]
        assert [b.metadata["n"] for b in listed] == ["2", "1", "0"]
        req = [{"custom_id": "x", "params": {"model": "m", "max_tokens": 5, "messages": MSGS}}]
        made = [(await a.messages.batches.create(requests=req)).id for _ in range(3)]
        assert [b.id async for b in a.messages.batches.list(limit=2)] == made[::-1]
        with pytest.raises(anthropic.BadRequestError):  # custom_id must match [a-zA-Z0-9_-]{1,64}
            await a.messages.batches.create(requests=[{**req[0], "custom_id": "x" * 65}])

    run(go())
    assert api.batches_created == 6


# ----------------------------------------------------------------------------- Anthropic batches

async def anthropic_batch(api: FakeAPI, n: int, polls: int = 50):
    c = ant(api)
    b = await c.messages.batches.create(requests=[
        {"custom_id": f"req-{i}", "params": {"model": "claude-3-5-haiku-latest", "max_tokens": 300,
                                             "messages": [{"role": "user", "content": f"Ch {i}"}]}}
        for i in range(n)])
    assert b.type == "message_batch" and b.id.startswith("msgbatch_")
    assert b.processing_status == "in_progress" and b.request_counts.processing == n
    assert b.results_url is None and b.expires_at > b.created_at
    for _ in range(polls):
        b = await c.messages.batches.retrieve(b.id)
        if b.processing_status == "ended":
            break
        await asyncio.sleep(0.05)
    results = [r async for r in await c.messages.batches.results(b.id)]
    return b, results


def test_anthropic_batch_end_to_end():
    with FakeAPI(batch_complete_after=0.2) as api:
        b, results = run(anthropic_batch(api, 3))
        assert b.processing_status == "ended" and b.ended_at and b.results_url
        assert b.request_counts.succeeded == 3 and b.request_counts.processing == 0
        assert [r.custom_id for r in results] == ["req-0", "req-1", "req-2"]
        r0 = results[0].result
        assert r0.type == "succeeded" and r0.message.content[0].text.startswith("## ")
        assert r0.message.usage.service_tier == "batch"
        assert api.batches_created == 1 and api.count("/v1/messages/batches") == 1


def test_anthropic_batch_expired_with_partial_results(api):
    api.expire_next_batch(1)
    b, results = run(anthropic_batch(api, 3))
    assert b.request_counts.succeeded == 1 and b.request_counts.expired == 2
    assert [r.result.type for r in results] == ["succeeded", "expired", "expired"]


def test_anthropic_batch_errored_and_cancel():
    with FakeAPI(batch_complete_after=30) as api:
        async def go():
            c = ant(api)
            b = await c.messages.batches.create(requests=[
                {"custom_id": "a", "params": {"model": "m", "max_tokens": 5,
                                              "messages": [{"role": "user", "content": "x"}]}}])
            b = await c.messages.batches.cancel(b.id)
            assert b.processing_status == "canceling" and b.cancel_initiated_at
            b = await c.messages.batches.retrieve(b.id)
            assert b.processing_status == "ended" and b.request_counts.canceled == 1
            return [r async for r in await c.messages.batches.results(b.id)]

        assert [r.result.type for r in run(go())] == ["canceled"]
        api.batch_complete_after = 0

        async def bad():
            c = ant(api)
            b = await c.messages.batches.create(requests=[
                {"custom_id": "bad", "params": {"model": "m", "max_tokens": 5, "messages": []}}])
            b = await c.messages.batches.retrieve(b.id)
            return b, [r async for r in await c.messages.batches.results(b.id)]

        b, res = run(bad())
        assert b.request_counts.errored == 1 and res[0].result.type == "errored"
        assert res[0].result.error.error.type == "invalid_request_error"


# ----------------------------------------------------------------------------- HTTP details, CLI

def raw_http(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf or len(buf.partition(b"\r\n\r\n")[2]) < int(
                [ln for ln in buf.split(b"\r\n") if ln.lower().startswith(b"content-length")][0]
                .split(b":")[1]):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


def test_chunked_request_body_and_keepalive(api):
    body = json.dumps({"model": "m", "messages": MSGS}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 20]), body[i:i + 20])
                      for i in range(0, len(body), 20)) + b"0\r\n\r\n"
    resp = raw_http(api.url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + chunks)
    head, _, payload = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"connection: keep-alive" in head
    assert json.loads(payload)["choices"][0]["message"]["content"]
    assert api.generation_bodies()[0]["messages"] == MSGS


def test_unknown_path_is_a_404(api):
    resp = raw_http(api.url, b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 404")


def test_cli_runs_in_the_foreground():
    script = Path(__file__).with_name("fakeapi.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--latency", "0.01"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split()[1]

        class Remote:  # enough of FakeAPI for the helpers
            pass

        remote = Remote()
        remote.url = url
        assert run(chat(remote)).choices[0].message.content.startswith("## ")
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stdout.close()
