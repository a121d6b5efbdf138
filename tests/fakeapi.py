"""A fake OpenAI + Anthropic API server on 127.0.0.1, for tests and benchmarks.

It speaks enough of both wire formats that the official ``openai`` and ``anthropic`` SDKs parse
its answers: chat completions, messages, scripted faults, rate limits, and both batch protocols.
It is a raw ``asyncio.start_server`` with a minimal HTTP/1.1 parser (keep-alive, Content-Length
or chunked request bodies), so it takes thousands of requests a second.

    with FakeAPI(latency=0.01, rpm=600) as api:
        client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="x")
        anth = anthropic.AsyncAnthropic(base_url=api.url, api_key="x")
        api.script("429", "drop", {"delay": 0.5})   # the next three generation requests

Faults apply to ``POST /v1/chat/completions`` and ``POST /v1/messages`` only: ``"429"`` (with
``retry-after: 1``) or any other status code as a string, ``"drop"``, ``"nonjson"``, ``"empty"``,
``"truncate"``, ``"refusal"``, ``"empty_billed"`` (no text, cut at max_tokens with every output
token billed: a reasoning model that spent them thinking), or a dict: ``{"status": 429,
"headers": {...}}`` (headers replace the default retry-after), ``{"status": 500, "body":
{...}}``, ``{"delay": 0.5}``, and ``{"kind": "truncate", "delay": 0.1}``. A fault is
consumed by the next generation request that passes validation (400) and the rpm/tpm limiter
(429); ``latency`` applies before faults too.

Times (``Recorded.at``, ``accepted_times``) are ``time.monotonic()`` values.
Run standalone: ``python tests/fakeapi.py --port 0`` prints ``READY http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from http import HTTPStatus
from typing import Any

__all__ = ["FakeAPI", "Recorded", "default_text", "GEN_PATHS"]

GEN_PATHS = ("/v1/chat/completions", "/v1/messages")
REFUSAL = "I'm sorry, but I can't help with that."
WINDOW = 60.0
_REASONS = {s.value: s.phrase for s in HTTPStatus} | {529: "Overloaded"}
_INVALID = "invalid_request_error"
# status -> (OpenAI error type, OpenAI code, Anthropic error type, message)
_ERRORS = {
    400: (_INVALID, None, _INVALID, "Invalid request."),
    401: (_INVALID, "invalid_api_key", "authentication_error", "Invalid API key provided."),
    403: (_INVALID, None, "permission_error", "Permission denied."),
    404: (_INVALID, "model_not_found", "not_found_error", "The resource does not exist."),
    413: (_INVALID, None, "request_too_large", "Request exceeds the maximum allowed size."),
    422: (_INVALID, None, _INVALID, "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "rate_limit_error", "Rate limit reached."),
    500: ("server_error", None, "api_error", "The server had an error processing your request."),
    503: ("server_error", None, "api_error", "The engine is currently overloaded."),
    529: ("server_error", None, "overloaded_error", "Overloaded"),
}
_BATCH_NULLS = ("errors", "output_file_id", "error_file_id", "in_progress_at", "finalizing_at",
                "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at",
                "model", "usage")
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_FAULT_KINDS = {"drop", "nonjson", "empty", "truncate", "refusal", "empty_billed"}


@dataclass
class Recorded:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # lower-case keys
    body: dict | bytes | None  # parsed JSON when it is JSON, else the raw bytes; None when empty
    at: float  # time.monotonic() at arrival
    rejected: bool = False  # refused by the rpm/tpm limiter
    fault: str | None = None  # the scripted fault applied to it, if any
    query: str = ""
    status: int = 0  # 200 once a generation request was answered (errors leave 0)
    usage: tuple[int, int] = (0, 0)  # (input, output) tokens billed for that answer


# ----------------------------------------------------------------------------- default text

_VOCAB = """
fundamental elementary careful precise general simple classical modern discrete continuous
  linear gradual natural formal practical central useful basic subtle robust stable hidden familiar
  abstract
  concrete local global dynamic static surprising elegant compact finite infinite symmetric random
principle equation model system process structure function variable method theorem concept pattern
  quantity relation experiment measurement example proof argument diagram network boundary sequence
  mechanism hypothesis population signal energy force rate ratio interval surface curve matrix graph
  cycle limit estimate observation
describes explains determines constrains predicts reveals connects governs illustrates transforms
  summarizes clarifies approximates measures limits shapes organizes
algebra geometry biology chemistry physics history economics statistics ecology astronomy
  linguistics topology geology genetics probability calculus mechanics optics
"""
_ADJ, _NOUN, _VERB, _FIELD = (p.split() for p in re.split(r"\n(?! )", _VOCAB.strip()))
_TEMPLATES = (
    "The {a} {n} {v} how a {n2} behaves in {f}.",
    "In {f}, every {n} can be understood as a {a} {n2}.",
    "Students often find that the {n} {v} the {a} {n2} more clearly than any {n3}.",
    "Consider a {a} {n}: it {v} the {n2} and, in turn, the {a2} {n3}.",
    "A {a} {n} is therefore useful whenever the {n2} is not {a2}.",
    "Historically, the study of {f} began with a {a} {n} and a {a2} {n2}.",
    "We will return to the {a} {n} when we examine the {n2} in the next section.",
    "Notice that the {n} {v} a {a} {n2}, which is why {f} relies on it.",
    "To see why, compare a {a} {n} with a {a2} {n2} from {f}.",
    "This {n} {v} the {n2}, so the {a} {n3} follows directly.",
    "Each {n} of this kind is {a}, yet its {n2} remains {a2}.",
    "Experts in {f} measure the {n} by tracking the {a} {n2} over time.",
)


@lru_cache(maxsize=4096)
def default_text(digest: str) -> str:
    """About 120 words of textbook-like markdown, a pure function of ``digest``."""
    rng = random.Random(digest)
    adj, noun = iter(rng.choices(_ADJ, k=20)), iter(rng.choices(_NOUN, k=28))
    verb, fld = iter(rng.choices(_VERB, k=9)), iter(rng.choices(_FIELD, k=10))
    f = next(fld)
    templates = iter(rng.sample(_TEMPLATES, 9))
    title = f"## The {next(adj).title()} {next(noun).title()} in {f.title()}"
    paras = []
    for n_sent in (4, 3, 2):
        sents = []
        for i in range(n_sent):
            s = next(templates).format(a=next(adj), a2=next(adj), n=next(noun), n2=next(noun),
                                       n3=next(noun), v=next(verb), f=f if i % 2 else next(fld))
            sents.append(s[0].upper() + s[1:])
        paras.append(" ".join(sents))
    text = title + "\n\n" + "\n\n".join(paras) + "\n"
    for v in "aeiou":  # "a elegant" -> "an elegant"
        text = text.replace(f" a {v}", f" an {v}").replace(f"A {v}", f"An {v}")
    return text


def _words(x: Any) -> int:
    """Word count of a message list / content blocks / string (our stand-in for tokens)."""
    if isinstance(x, str):
        return len(x.split())
    if isinstance(x, list):
        return sum(_words(b) for b in x)
    if isinstance(x, dict):
        return _words(x.get("content")) + _words(x.get("text"))
    return 0


def _cut_words(text: str, n: int) -> str:
    """The text up to its n-th word, keeping the original layout."""
    for i, m in enumerate(re.finditer(r"\S+", text)):
        if i == n - 1:
            return text[: m.end()]
    return text if n > 0 else ""


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dur(s: float) -> str:
    return f"{max(0, int(s * 1000))}ms" if s < 1 else f"{round(s, 3):g}s"


def _normalize_fault(f: str | dict) -> dict:
    if isinstance(f, dict):
        return dict(f)
    if f in _FAULT_KINDS:
        return {"kind": f}
    if f.isdigit():
        return {"status": int(f)}
    raise ValueError(f"unknown fault {f!r}")


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class _Drop(Exception):
    pass


# ----------------------------------------------------------------------------- the server

class FakeAPI:
    def __init__(self, *, latency: float = 0.0, rpm: int | None = None, tpm: int | None = None,
                 responder: Callable[[dict], str] | None = None,
                 batch_complete_after: float = 0.0, port: int = 0, host: str = "127.0.0.1",
                 hold: Callable[[dict], bool] | None = None,
                 input_tokens: Callable[[dict], int] | None = None,
                 answer_model: str | None = None):
        self.latency, self.rpm, self.tpm = latency, rpm, tpm
        # billing as another tokenizer counts: the input tokens reported for a request body
        # (default: its words); ``answer_model``: the model named in answers (default: asked)
        self.input_tokens, self.answer_model = input_tokens, answer_model
        # a generation request whose body ``hold`` is true for is answered once it is false
        # (asked every 10 ms; the other requests are served meanwhile)
        self.hold = hold
        self.responder, self.batch_complete_after = responder, batch_complete_after
        self.host, self.port, self.url = host, port, ""
        self.requests: list[Recorded] = []
        self.accepted_times: list[float] = []
        self.accepted_tokens: list[tuple[float, int]] = []
        self._faults: collections.deque[dict] = collections.deque()
        self._lock = threading.Lock()
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self._window_tokens = 0
        self._expire_next: int | None = None
        self._expire_times = 0
        self._fail_next = False
        self.in_flight = 0  # generation requests being answered now
        self.max_in_flight = 0
        self._files: dict[str, dict] = {}
        self._oa_batches: dict[str, dict] = {}
        self._an_batches: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self._nonce = os.urandom(3).hex()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start_async(self) -> FakeAPI:
        """Listen on the running loop (``start`` and the CLI use this)."""
        self._server = await asyncio.start_server(self._connection, self.host, self.port,
                                                  limit=1 << 20, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    def start(self) -> FakeAPI:
        """Serve from a fresh event loop in a daemon thread (safe to call from async code)."""
        loop, ready, err = asyncio.new_event_loop(), threading.Event(), []
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as e:  # re-raised by start()
                err.append(e)
            ready.set()
            if not err:
                loop.run_forever()
                tasks = asyncio.all_tasks(loop)
                for t in tasks:
                    t.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="FakeAPI", daemon=True)
        self._thread.start()
        ready.wait(10)
        if err:
            raise err[0]
        return self

    async def stop_async(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()

    def stop(self) -> None:
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            await self.stop_async()
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(shutdown()))
        thread.join(5)

    def __enter__(self) -> FakeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test-facing helpers
    def script(self, *faults: str | dict) -> None:
        """Queue faults for the next generation requests, one each, in order."""
        norm = [_normalize_fault(f) for f in faults]
        with self._lock:
            self._faults.extend(norm)

    def expire_next_batch(self, complete: int, times: int = 1) -> None:
        """The next ``times`` batches (either protocol) end expired, with results for their
        first ``complete`` lines only."""
        with self._lock:
            self._expire_next, self._expire_times = complete, times

    def fail_next_batch(self) -> None:
        """The next OpenAI batch created fails validation as a whole (status ``failed``)."""
        self._fail_next = True

    def count(self, path: str | None = None) -> int:
        reqs = list(self.requests)
        return len(reqs) if path is None else sum(r.path == path for r in reqs)

    def generation_bodies(self, include_rejected: bool = True) -> list[dict]:
        return [r.body for r in list(self.requests)
                if r.method == "POST" and r.path in GEN_PATHS and isinstance(r.body, dict)
                and (include_rejected or not r.rejected)]

    @property
    def batches_created(self) -> int:
        return len(self._oa_batches) + len(self._an_batches)

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    def clear_faults(self) -> None:
        """Drop the scripted faults no request has taken yet."""
        with self._lock:
            self._faults.clear()

    # ------------------------------------------------------------------ HTTP plumbing
    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ValueError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; False when the connection should close."""
        head = (await reader.readuntil(b"\r\n\r\n")).lstrip(b"\r\n").decode("latin-1")
        lines = head.split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for ln in lines[1:]:
            if ln:
                k, _, v = ln.partition(":")
                headers[k.strip().lower()] = v.strip()
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        else:
            n = int(headers.get("content-length") or 0)
            body = await reader.readexactly(n) if n else b""
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        path, _, query = target.partition("?")
        try:
            status, extra, payload, ctype = await self._dispatch(method, path, query, headers, body)
        except _Drop:
            writer.transport.abort()
            return False
        except Exception as e:  # a bug in the fake: say so instead of hanging up
            msg = f"fakeapi internal error: {type(e).__name__}: {e}"
            status, extra, payload, ctype = self._error(500, path, msg)
        out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"content-type: {ctype}",
               f"content-length: {len(payload)}", "connection: keep-alive" if keep else
               "connection: close"]
        out += [f"{k}: {v}" for k, v in extra.items()]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()
        return keep

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16):
            out += await reader.readexactly(size)
            await reader.readexactly(2)
        while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
            pass
        return bytes(out)

    def _rid(self, prefix: str) -> str:
        return f"{prefix}{self._nonce}{next(self._ids):010x}"

    def _json(self, status: int, obj: Any, extra: dict | None = None) -> tuple:
        rid = self._rid("req_")
        return (status, {"x-request-id": rid, "request-id": rid, **(extra or {})},
                json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, path: str, message: str | None = None,
               extra: dict | None = None) -> tuple:
        server = status >= 500
        oa_type, oa_code, an_type, default = _ERRORS.get(status, (
            "server_error" if server else _INVALID, None, "api_error" if server else _INVALID,
            f"HTTP {status}"))
        if path.startswith("/v1/messages"):
            body: dict = {"type": "error", "request_id": self._rid("req_"),
                          "error": {"type": an_type, "message": message or default}}
        else:
            body = {"error": {"message": message or default, "type": oa_type, "param": None,
                              "code": oa_code}}
        return self._json(status, body, extra)

    async def _dispatch(self, method: str, path: str, query: str, headers: dict,
                        raw: bytes) -> tuple:
        body: dict | bytes | None = raw or None
        if raw and "multipart/" not in headers.get("content-type", ""):
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        rec = Recorded(method, path, headers, body, time.monotonic(), query=query)
        self.requests.append(rec)
        if method == "POST" and path in GEN_PATHS:
            return await self._generation(rec)
        parts = path.strip("/").split("/")[1:] if path.startswith("/v1/") else []
        if parts[:2] == ["messages", "batches"]:
            return self._an_batch_route(method, parts[2:], body, query)
        if parts[:1] == ["files"]:
            return self._files_route(method, parts[1:], headers, raw)
        if parts[:1] == ["batches"]:
            return self._oa_batch_route(method, parts[1:], body, query)
        if method == "GET" and parts == ["models"]:
            return self._json(200, {"object": "list", "data": []})
        return self._error(404, path, f"Unknown path {method} {path}")

    # ------------------------------------------------------------------ rate limiting
    def _admit(self, cost: int) -> float | None:
        """Record the request in the 60-s window, or return seconds until it would fit."""
        now, w = time.monotonic(), self._window
        while w and w[0][0] <= now - WINDOW:
            self._window_tokens -= w.popleft()[1]
        if self.rpm is not None and len(w) >= self.rpm:
            return w[len(w) - self.rpm][0] + WINDOW - now
        if self.tpm is not None and self._window_tokens + cost > self.tpm:
            need, freed = self._window_tokens + cost - self.tpm, 0
            for t, c in w if cost <= self.tpm else ():
                freed += c
                if freed >= need:
                    return t + WINDOW - now
            return WINDOW
        w.append((now, cost))
        self._window_tokens += cost
        self.accepted_times.append(now)
        self.accepted_tokens.append((now, cost))
        return None

    def _limit_headers(self, anthropic: bool) -> dict[str, str]:
        rl, tl = self.rpm or 10_000, self.tpm or 10_000_000
        rr, tr = str(max(0, rl - len(self._window))), str(max(0, tl - self._window_tokens))
        reset = (self._window[0][0] + WINDOW - time.monotonic()) if self._window else 0.0
        if not anthropic:
            return {"x-ratelimit-limit-requests": str(rl), "x-ratelimit-remaining-requests": rr,
                    "x-ratelimit-limit-tokens": str(tl), "x-ratelimit-remaining-tokens": tr,
                    "x-ratelimit-reset-requests": _dur(reset),
                    "x-ratelimit-reset-tokens": _dur(reset)}
        at = _rfc3339(time.time() + reset)
        h = {"anthropic-ratelimit-requests-limit": str(rl),
             "anthropic-ratelimit-requests-remaining": rr, "anthropic-ratelimit-requests-reset": at}
        for kind in ("tokens", "input-tokens", "output-tokens"):
            h[f"anthropic-ratelimit-{kind}-limit"] = str(tl)
            h[f"anthropic-ratelimit-{kind}-remaining"] = tr
            h[f"anthropic-ratelimit-{kind}-reset"] = at
        return h

    # ------------------------------------------------------------------ generation
    @staticmethod
    def _input_words(body: dict, anthropic: bool) -> int:
        return _words(body.get("messages")) + (_words(body.get("system")) if anthropic else 0)

    @staticmethod
    def _max_tokens(body: dict) -> int | None:
        mt = body.get("max_tokens", body.get("max_completion_tokens"))
        return mt if isinstance(mt, int) else None

    def _text_for(self, body: dict, anthropic: bool) -> str:
        if self.responder is not None:
            text = self.responder(body)
            if text is not None:  # None: fall back to the default text
                return text
        key = [body.get("messages"), body.get("system")] if anthropic else body.get("messages")
        return default_text(hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest())

    def _answer(self, body: dict, anthropic: bool, kind: str | None = None,
                tier: str | None = None) -> dict:
        """A complete chat.completion / message object answering ``body``."""
        model = self.answer_model or body.get("model", "fake-model")
        full = self._text_for(body, anthropic)
        mt, stop = self._max_tokens(body), "stop"
        if mt is not None and len(full.split()) > mt:
            full, stop = _cut_words(full, mt), "length"
        if kind == "truncate":
            full, stop = _cut_words(full, max(1, len(full.split()) // 2)), "length"
        text = None if kind in ("refusal", "empty", "empty_billed") else full
        stop = kind if text is None and kind else stop
        n_in, n_out = self._input_words(body, anthropic), len((text or "").split())
        if self.input_tokens is not None:
            n_in = self.input_tokens(body)
        if kind == "empty_billed":
            text, stop, n_out = "", "length", mt or 0
        if anthropic:
            reason = {"stop": "end_turn", "length": "max_tokens", "refusal": "refusal",
                      "empty": "end_turn"}[stop]
            return {"id": self._rid("msg_"), "type": "message", "role": "assistant",
                    "model": model, "content": [{"type": "text", "text": text}] if text else [],
                    "stop_reason": reason, "stop_sequence": None,
                    "usage": {"input_tokens": n_in, "output_tokens": n_out,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                              "service_tier": tier or "standard"}}
        msg: dict[str, Any] = {"role": "assistant", "content": text, "annotations": [],
               "refusal": REFUSAL if stop == "refusal" else None}
        choice = {"index": 0, "message": msg, "logprobs": None,  # (empty_billed: content "")
                  "finish_reason": "length" if stop == "length" else "stop"}
        return {"id": self._rid("chatcmpl-"), "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [] if stop == "empty" else [choice],
                "service_tier": tier or "default", "system_fingerprint": "fp_fakeapi",
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                          "total_tokens": n_in + n_out,
                          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}}

    @staticmethod
    def _validate(body: Any, anthropic: bool) -> str | None:
        if not isinstance(body, dict):
            return "We could not parse the JSON body of your request."
        if not body.get("model"):
            return "model: Field required" if anthropic else "you must provide a model parameter"
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return "messages: Field required" if anthropic else "'messages' is a required property"
        if anthropic and not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        return None

    async def _generation(self, rec: Recorded) -> tuple:
        anthropic, body = rec.path == "/v1/messages", rec.body
        problem = self._validate(body, anthropic)
        if problem:
            return self._error(400, rec.path, problem)
        assert isinstance(body, dict)
        cost = self._input_words(body, anthropic) + (self._max_tokens(body) or 0)
        if self.rpm is not None or self.tpm is not None:
            wait = self._admit(cost)
            if wait is not None:
                rec.rejected = True
                hdrs = self._limit_headers(anthropic)
                hdrs["retry-after"] = str(max(1, math.ceil(wait)))
                what = "requests" if self.rpm and len(self._window) >= self.rpm else "tokens"
                msg = f"Rate limit reached for {what} per minute (rpm={self.rpm}, tpm={self.tpm})."
                return self._error(429, rec.path, msg, hdrs)
        else:
            now = time.monotonic()
            self.accepted_times.append(now)
            self.accepted_tokens.append((now, cost))
        with self._lock:
            fault = self._faults.popleft() if self._faults else {}
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            while self.hold is not None and self.hold(body):
                await asyncio.sleep(0.01)
        finally:
            self.in_flight -= 1
        kind = fault.get("kind")
        if fault:
            rec.fault = str(kind or fault.get("status") or "delay")
            if fault.get("delay"):
                await asyncio.sleep(fault["delay"])
        if kind == "drop":
            raise _Drop
        if kind == "nonjson":
            return 200, {"x-request-id": self._rid("req_")}, b"<html>oops</html>", "text/html"
        if "status" in fault:
            status = int(fault["status"])
            hdrs = dict(fault.get("headers") or ({"retry-after": "1"} if status == 429 else {}))
            if "body" in fault:
                payload = fault["body"]
                payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                return status, {"x-request-id": self._rid("req_"), **hdrs}, payload, \
                    "application/json"
            return self._error(status, rec.path, fault.get("message"), hdrs)
        try:
            answer = self._answer(body, anthropic, kind)
        except Exception as e:
            return self._error(500, rec.path, f"responder failed: {type(e).__name__}: {e}")
        u = answer["usage"]
        rec.status = 200
        rec.usage = (u.get("prompt_tokens", u.get("input_tokens", 0)),
                     u.get("completion_tokens", u.get("output_tokens", 0)))
        return self._json(200, answer, self._limit_headers(anthropic))

    # ------------------------------------------------------------------ OpenAI files
    @staticmethod
    def _multipart(headers: dict, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
        m = re.search(r'boundary="?([^";]+)"?', headers.get("content-type", ""))
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in raw.split(b"--" + m.group(1).encode())[1:] if m else []:
            if part.startswith(b"--"):
                break
            head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
            disp = head.decode("latin-1")
            name = re.search(r'\bname="([^"]*)"', disp)
            fname = re.search(r'filename="([^"]*)"', disp)
            if name:
                fields[name.group(1)] = (fname and fname.group(1), content.removesuffix(b"\r\n"))
        return fields

    def _new_file(self, data: bytes, filename: str, purpose: str) -> dict:
        fid = self._rid("file-")
        meta = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed",
                "expires_at": None, "status_details": None}
        self._files[fid] = {"meta": meta, "data": data}
        return meta

    def _files_route(self, method: str, parts: list[str], headers: dict, raw: bytes) -> tuple:
        path = "/v1/files/" + "/".join(parts)
        if method == "POST" and not parts:
            fields = self._multipart(headers, raw)
            if "file" not in fields or "purpose" not in fields:
                return self._error(400, path, "'file' and 'purpose' are required multipart fields")
            fname, data = fields["file"]
            meta = self._new_file(data, fname or "upload.jsonl", fields["purpose"][1].decode())
            return self._json(200, meta)
        f = self._files.get(parts[0]) if parts else None
        if f is None:
            return self._error(404, path, f"No such File object: {path}")
        if method == "GET" and len(parts) == 1:
            return self._json(200, f["meta"])
        if method == "GET" and parts[1:] == ["content"]:
            return 200, {"x-request-id": self._rid("req_")}, f["data"], "application/octet-stream"
        if method == "DELETE" and len(parts) == 1:
            del self._files[parts[0]]
            return self._json(200, {"id": parts[0], "object": "file", "deleted": True})
        return self._error(404, path, f"Unknown path {method} {path}")

    # ------------------------------------------------------------------ OpenAI batches
    def _take_expiry(self) -> int | None:
        with self._lock:
            k = self._expire_next
            self._expire_times -= 1
            if self._expire_times <= 0:
                self._expire_next = None
        return k

    def _list(self, batches: dict[str, dict], query: str, anthropic: bool) -> tuple:
        """A newest-first page of batch objects, cursor-paginated like the real APIs."""
        q = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
        for b in batches.values():
            (self._an_advance if anthropic else self._oa_advance)(b)
        items = [b["obj"] for b in reversed(batches.values())]
        ids, limit = [o["id"] for o in items], int(q.get("limit", 20))
        if (after := q.get("after_id" if anthropic else "after")) in ids:
            items = items[ids.index(after) + 1:]
        if (before := q.get("before_id")) in ids:
            items = items[:ids.index(before)]
            items = items[-limit:] if len(items) > limit else items
        page = items[:limit]
        out = {"data": page, "has_more": len(items) > limit,
               "first_id": page[0]["id"] if page else None,
               "last_id": page[-1]["id"] if page else None}
        return self._json(200, out if anthropic else {"object": "list", **out})

    def _oa_batch_route(self, method: str, parts: list[str], body: Any, query: str) -> tuple:
        path = "/v1/batches/" + "/".join(parts)
        if method == "GET" and not parts:
            return self._list(self._oa_batches, query, False)
        if method == "POST" and not parts:
            if not isinstance(body, dict):
                return self._error(400, path, "Invalid JSON body")
            f = self._files.get(body.get("input_file_id", ""))
            if f is None:
                return self._error(404, path, f"No such File object: {body.get('input_file_id')}")
            if body.get("endpoint") != "/v1/chat/completions":
                return self._error(400, path, "fakeapi supports endpoint /v1/chat/completions only")
            now, lines, errors = int(time.time()), [], []
            for i, ln in enumerate(f["data"].decode().splitlines()):
                try:
                    item = json.loads(ln) if ln.strip() else None
                    if item is not None and not ("custom_id" in item and "body" in item):
                        raise ValueError
                except (ValueError, TypeError):
                    errors.append({"code": "invalid_json_line", "line": i + 1, "param": None,
                                   "message": "This line is not parseable as valid JSON."})
                else:
                    lines += [item] if item is not None else []
            obj = {"id": self._rid("batch_"), "object": "batch", "endpoint": body["endpoint"],
                   "input_file_id": f["meta"]["id"], "status": "validating",
                   "completion_window": body.get("completion_window", "24h"),
                   "created_at": now, "expires_at": now + 86400,
                   "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                   "metadata": body.get("metadata"), **dict.fromkeys(_BATCH_NULLS)}
            if self._fail_next:
                self._fail_next = False
                errors.append({"code": "invalid_request", "line": 1, "param": "body.model",
                               "message": "The model 'nope' does not exist."})
            if len({x["custom_id"] for x in lines}) != len(lines):
                errors.append({"code": "duplicate_custom_id", "line": None, "param": "custom_id",
                               "message": "The custom_id values in the input file are not unique."})
            if errors:
                obj.update(status="failed", failed_at=now,
                           errors={"object": "list", "data": errors},
                           request_counts={"total": 0, "completed": 0, "failed": 0})
            self._oa_batches[obj["id"]] = {"obj": obj, "lines": lines, "t0": time.monotonic(),
                                           "expire": self._take_expiry(), "cancel": False}
            return self._json(200, obj)
        b = self._oa_batches.get(parts[0]) if parts else None
        if b is None:
            return self._error(404, path, f"No batch found with id '{path}'")
        if method == "POST" and parts[1:] == ["cancel"]:
            if b["obj"]["status"] in ("validating", "in_progress"):
                b["cancel"] = True
                b["obj"].update(status="cancelling", cancelling_at=int(time.time()))
            return self._json(200, b["obj"])
        if method == "GET" and len(parts) == 1:
            self._oa_advance(b)
            return self._json(200, b["obj"])
        return self._error(404, path, f"Unknown path {method} {path}")

    def _oa_advance(self, b: dict) -> None:
        obj = b["obj"]
        if obj["status"] in ("completed", "expired", "cancelled", "failed"):
            return
        obj["in_progress_at"] = obj["in_progress_at"] or int(time.time())
        if b["cancel"]:
            self._oa_finish(b, 0, "cancelled", "batch_cancelled",
                            "This request was not executed because the batch was cancelled.")
        elif time.monotonic() - b["t0"] < self.batch_complete_after:
            obj["status"] = "in_progress"
        elif b["expire"] is not None:
            self._oa_finish(b, b["expire"], "expired", "batch_expired", "This request could "
                            "not be executed before the completion window expired.")
        else:
            self._oa_finish(b, len(b["lines"]), "completed", "", "")

    def _oa_finish(self, b: dict, k: int, status: str, code: str, message: str) -> None:
        obj, now = b["obj"], int(time.time())
        out: list[dict] = []
        err: list[dict] = []
        for i, item in enumerate(b["lines"]):
            row = {"id": self._rid("batch_req_"), "custom_id": item["custom_id"],
                   "response": None, "error": None}
            problem = self._validate(item["body"], False)
            if i >= k:
                row["error"] = {"code": code, "message": message}
            elif problem:
                row["response"] = {"status_code": 400, "request_id": self._rid("req_"), "body": {
                    "error": {"message": problem, "type": _INVALID, "param": None, "code": None}}}
            else:
                row["response"] = {"status_code": 200, "request_id": self._rid("req_"),
                                   "body": self._answer(item["body"], False, tier="default")}
            (out if i < k and not problem else err).append(row)
        if out:
            obj["output_file_id"] = self._new_file(_jsonl(out), "out.jsonl", "batch_output")["id"]
        if err:
            obj["error_file_id"] = self._new_file(_jsonl(err), "err.jsonl", "batch_output")["id"]
        obj.update(request_counts={"total": len(b["lines"]), "completed": len(out),
                                   "failed": len(err)}, status=status, finalizing_at=now)
        obj[{"completed": "completed_at", "expired": "expired_at",
             "cancelled": "cancelled_at"}[status]] = now

    # ------------------------------------------------------------------ Anthropic message batches
    def _an_batch_route(self, method: str, parts: list[str], body: Any, query: str) -> tuple:
        path = "/v1/messages/batches/" + "/".join(parts)
        if method == "GET" and not parts:
            return self._list(self._an_batches, query, True)
        if method == "POST" and not parts:
            reqs = body.get("requests") if isinstance(body, dict) else None
            if not isinstance(reqs, list) or not reqs:
                return self._error(400, path, "requests: Field required")
            ids = [r.get("custom_id") if isinstance(r, dict) else None for r in reqs]
            if len(set(ids)) != len(ids) or not all(
                    isinstance(i, str) and _CUSTOM_ID.fullmatch(i) for i in ids):
                return self._error(400, path, "requests: custom_id values must be unique and "
                                   "match ^[a-zA-Z0-9_-]{1,64}$")
            now = time.time()
            counts = {"processing": len(reqs), "succeeded": 0, "errored": 0, "canceled": 0,
                      "expired": 0}
            obj: dict[str, Any] = {
                "id": self._rid("msgbatch_"), "type": "message_batch",
                "processing_status": "in_progress", "request_counts": counts, "ended_at": None,
                "created_at": _rfc3339(now), "expires_at": _rfc3339(now + 86400),
                "archived_at": None, "cancel_initiated_at": None, "results_url": None}
            self._an_batches[obj["id"]] = {"obj": obj, "reqs": reqs, "t0": time.monotonic(),
                                           "expire": self._take_expiry(), "cancel": False,
                                           "results": b""}
            return self._json(200, obj)
        b = self._an_batches.get(parts[0]) if parts else None
        if b is None:
            return self._error(404, path, f"No message batch found with id '{path}'")
        if method == "GET" and len(parts) == 1:
            self._an_advance(b)
            return self._json(200, b["obj"])
        if method == "POST" and parts[1:] == ["cancel"]:
            if b["obj"]["processing_status"] == "in_progress":
                b["cancel"] = True
                b["obj"].update(processing_status="canceling",
                                cancel_initiated_at=_rfc3339(time.time()))
            return self._json(200, b["obj"])
        if method == "GET" and parts[1:] == ["results"]:
            self._an_advance(b)
            if b["obj"]["processing_status"] != "ended":
                return self._error(400, path, "Message batch is still processing")
            return 200, {"request-id": self._rid("req_")}, b["results"], "application/binary"
        return self._error(404, path, f"Unknown path {method} {path}")

    def _an_advance(self, b: dict) -> None:
        obj = b["obj"]
        if obj["processing_status"] == "ended" or (
                not b["cancel"] and time.monotonic() - b["t0"] < self.batch_complete_after):
            return
        k = 0 if b["cancel"] else (b["expire"] if b["expire"] is not None else len(b["reqs"]))
        late = "canceled" if b["cancel"] else "expired"
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        rows = []
        for i, r in enumerate(b["reqs"]):
            params = r.get("params")
            if i >= k:
                result: dict = {"type": late}
            elif problem := self._validate(params, True):
                result = {"type": "errored", "error": {
                    "type": "error", "request_id": self._rid("req_"),
                    "error": {"type": _INVALID, "message": problem}}}
            else:
                result = {"type": "succeeded", "message": self._answer(params, True, tier="batch")}
            counts[result["type"]] += 1
            rows.append({"custom_id": r["custom_id"], "result": result})
        b["results"] = _jsonl(rows)
        obj.update(processing_status="ended", request_counts=counts, ended_at=_rfc3339(time.time()),
                   results_url=f"{self.url}/v1/messages/batches/{obj['id']}/results")


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fake OpenAI/Anthropic API server on 127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--rpm", type=int, default=None)
    ap.add_argument("--tpm", type=int, default=None)
    ap.add_argument("--batch-complete-after", type=float, default=0.0)
    a = ap.parse_args(argv)

    async def serve() -> None:
        api = FakeAPI(latency=a.latency, rpm=a.rpm, tpm=a.tpm, port=a.port,
                      batch_complete_after=a.batch_complete_after)
        await api.start_async()
        print(f"READY {api.url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
