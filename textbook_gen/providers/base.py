"""What every provider takes and gives: ``Request`` in, ``Response`` out, errors as ``ProviderError``.

A provider is a class with a few class attributes and one async method, ``complete``; the
engine owns retries, rate limits and storage, so a provider makes exactly one attempt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, ClassVar

from textbook_gen.spec import ModelSettings


@dataclass(frozen=True, slots=True)
class Request:
    """A canonical API request. ``key`` (sha256 of the canonical JSON) is its identity in the store."""

    provider: str
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content); role "system" comes first if present
    params: tuple[tuple[str, Any], ...]  # sorted (name, value): temperature, max_tokens, seed, ...
    key: str = field(default="", compare=False)

    @classmethod
    def build(
        cls, provider: str, model: str, messages: list[tuple[str, str]], params: dict[str, Any]
    ) -> Request:
        clean = tuple(sorted((k, v) for k, v in params.items() if v is not None))
        req = cls(provider, model, tuple(messages), clean)
        object.__setattr__(req, "key", hashlib.sha256(req.canonical_json().encode()).hexdigest())
        return req

    def canonical(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "messages": [{"role": r, "content": c} for r, c in self.messages],
            "params": dict(self.params),
        }

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_canonical(cls, data: dict[str, Any]) -> Request:
        msgs = [(m["role"], m["content"]) for m in data["messages"]]
        return cls.build(data["provider"], data["model"], msgs, data["params"])

    @property
    def param(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def system(self) -> str | None:
        return next((c for r, c in self.messages if r == "system"), None)

    @property
    def chat(self) -> list[dict[str, str]]:
        """Messages without the system one, in the shape both SDKs take."""
        return [{"role": r, "content": c} for r, c in self.messages if r != "system"]

    @property
    def answer_start(self) -> str | None:
        """The start of the answer the template wrote (a last "assistant" message), which the
        model continues; the document is this text followed by the model's."""
        role, content = self.messages[-1]
        return content if role == "assistant" else None


def sent_seed(seed: int) -> int:
    """The seed as a server takes it: llama.cpp and others read 32 bits. The request's
    identity keeps the whole (63-bit) seed; a 32-bit one is sent as it is."""
    return seed % 2**32


def same_model(asked: str, answered: str) -> bool:
    """Whether a server that answered as ``answered`` ran the model that was asked for: the
    same name, or a dated snapshot or ``-latest`` alias of it (``gpt-4o-mini`` answers as
    ``gpt-4o-mini-2024-07-18``)."""
    from textbook_gen.tokens import is_version_of

    return answered == asked or is_version_of(answered, asked) or is_version_of(asked, answered)


def with_answer_start(req: Request, resp: Response) -> Response:
    """The whole document: the template's answer start, then what the model wrote."""
    start = req.answer_start
    if not start:
        return resp
    import dataclasses

    return dataclasses.replace(resp, text=start + resp.text)


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What the server said about its limits in the response headers; None where it said nothing."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    limit_input_tokens: int | None = None
    limit_output_tokens: int | None = None
    reset_s: float | None = None  # seconds until an exhausted limit (remaining == 0) has room


def parse_reset(value: str | None) -> float | None:
    """Seconds until a limit resets: OpenAI's "1s" / "6m0s" / "20ms", or an RFC 3339 time
    (Anthropic)."""
    if not value:
        return None
    import re
    from datetime import datetime

    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    if parts and "".join(n + u for n, u in parts) == value.strip():
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        return sum(float(n) * scale[u] for n, u in parts)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True, slots=True)
class Response:
    """One answer. ``finish_reason`` is normalised: stop | length | refusal | content_filter."""

    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    model: str
    response_id: str | None = None
    latency_s: float = 0.0
    rate_limits: RateLimitInfo | None = None


class Provider:
    """Base class. Subclasses set the class attributes and implement ``complete``."""

    name: ClassVar[str]
    needs_key: ClassVar[bool] = False
    key_env_var: ClassVar[str | None] = None
    supports_batch: ClassVar[bool] = False
    # can continue an answer the template started (a final assistant message): local, anthropic
    supports_answer_start: ClassVar[bool] = False
    # HTTP providers get one client per CONNECTIONS_PER_CLIENT requests in flight: an HTTP
    # connection pool scans its connections for every request, so one pool of 500 costs
    # more CPU than the requests themselves (bench/bench_engine.py: +50% req/s at 500).
    connections_per_client: ClassVar[int | None] = None

    def __init__(self, settings: ModelSettings, *, timeout: float = 600.0):
        self.settings = settings
        self.timeout = timeout
        # set by the engine: called once per token as a provider that streams generates it
        self.on_token: Callable[[], None] | None = None

    @property
    def endpoint(self) -> str | None:
        """The URL requests go to, for messages; None for a model in this process."""
        return None

    async def complete(self, request: Request) -> Response:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release connections or models. Safe to call twice."""


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``retry-after`` (seconds or HTTP-date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def empty_answer(finish_reason: str, usage: tuple[int, int]) -> Exception:
    """The error for an answer with no text, carrying the usage the provider billed for it.
    Cut at max_tokens, it is a reasoning model that spent them all before writing."""
    from textbook_gen.errors import ProviderError

    if finish_reason == "length":
        return ProviderError(
            f"the answer is empty: the model used all {usage[1]} output tokens it was allowed"
            " before writing any text (a reasoning model thinks first); raise max_tokens (for"
            " the judge, curation.judge.max_tokens)", kind="empty", usage=usage)
    return ProviderError("the answer has no text", kind="empty", usage=usage)


RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
FATAL_STATUS = frozenset({401, 403, 404})


def status_error(status: int, message: str, headers: Any = None) -> Exception:
    """Map an HTTP status to our error class: retryable, fatal for the run, or failed for this job."""
    from textbook_gen.errors import FatalProviderError, ProviderError

    retry_after = parse_retry_after(headers)
    if status in RETRYABLE_STATUS or status >= 500:
        kind = "rate_limited" if status == 429 else f"http_{status}"
        return ProviderError(message, status=status, retryable=True, retry_after=retry_after,
                             kind=kind)
    if status in FATAL_STATUS:
        return FatalProviderError(message, status=status, kind=f"http_{status}")
    return ProviderError(message, status=status, retryable=False, kind=f"http_{status}")


def sdk_error_message(e: Any) -> str:
    """The server's own error message from an SDK APIStatusError, with the status."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return f"HTTP {e.status_code}: {err['message']}"
    return f"HTTP {e.status_code}: {getattr(e, 'message', e)}"


async def post_json(client: Any, sdk: Any, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """POST through an official SDK client; return the decoded JSON body and the headers.

    Posting with ``cast_to=<the SDK's HTTP response class>`` keeps the SDK's transport, auth,
    headers and exception classes but skips its typed request transform and response model
    construction, which cost more CPU than everything else in a run (bench/bench_engine.py).
    Both SDKs share the exception names mapped here.
    """
    from textbook_gen.errors import ProviderError

    base = sdk._base_client
    raw_type = (getattr(base, "httpx2", None) or base.httpx).Response
    try:
        raw = await client.post(path, cast_to=raw_type, body=body)
    except sdk.APIStatusError as e:
        raise status_error(e.status_code, sdk_error_message(e), e.response.headers) from None
    except sdk.APITimeoutError:
        raise ProviderError("request timed out", retryable=True, kind="timeout") from None
    except sdk.APIConnectionError as e:
        raise ProviderError(f"connection failed: {e.__cause__ or e}", retryable=True,
                            kind="connection") from None
    # A 200 whose body is not JSON is a proxy's or gateway's page, not the model's answer:
    # retried within the run like a 5xx (bounded by max_retries).
    try:
        data = json.loads(raw.content)
    except ValueError:
        snippet = raw.content[:120].decode("utf-8", "replace")
        raise ProviderError(f"response is not JSON: {snippet!r}", retryable=True,
                            kind="bad_body") from None
    if not isinstance(data, dict):
        raise ProviderError(f"unexpected response body: {str(data)[:120]!r}", retryable=True,
                            kind="bad_body")
    return data, raw.headers
