"""Anthropic Messages API through the official SDK."""

from __future__ import annotations

from typing import Any

from textbook_gen.providers._http import HTTPProvider
from textbook_gen.providers.base import (
    RateLimitInfo,
    Request,
    Response,
    empty_answer,
    parse_reset,
)

_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
         "refusal": "refusal", "tool_use": "stop", "pause_turn": "stop"}


class AnthropicProvider(HTTPProvider):
    name = "anthropic"
    supports_answer_start = True  # a final assistant message is continued (prefill)
    key_env_var = "ANTHROPIC_API_KEY"
    sdk = "anthropic"
    client_class = "AsyncAnthropic"
    path = "/v1/messages"

    def request_body(self, req: Request) -> dict[str, Any]:
        """Parameters for /v1/messages (also the ``params`` of a Message Batches request)."""
        p = req.param
        body: dict[str, Any] = {"model": req.model, "max_tokens": p["max_tokens"],
                                "messages": req.chat}
        if req.system:
            body["system"] = req.system
        # Newer models reject sampling parameters (and the SDK no longer types them), so they
        # are sent only when the spec sets them explicitly (never both: models refuse that).
        chosen = self.settings.model_fields_set
        if "top_p" in p and "top_p" in chosen:
            body["top_p"] = p["top_p"]
        elif "temperature" in p and "temperature" in chosen:
            body["temperature"] = min(p["temperature"], 1.0)
        return body

    @staticmethod
    def parse(data: dict[str, Any], latency: float, limits: RateLimitInfo | None) -> Response:
        return parse_message(data, latency, limits)

    @staticmethod
    def limits(headers: Any) -> RateLimitInfo | None:
        return _limits(headers)


def parse_message(message: dict[str, Any], latency: float = 0.0,
                  limits: RateLimitInfo | None = None) -> Response:
    """Message (JSON body, also a batch result's) -> Response."""
    blocks = message.get("content") or []
    text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
    finish = _STOP.get(message.get("stop_reason") or "end_turn", "stop")
    usage = message.get("usage") or {}
    # cache reads and writes are input the account pays for too
    billed = (int(usage.get("input_tokens") or 0)
              + int(usage.get("cache_creation_input_tokens") or 0)
              + int(usage.get("cache_read_input_tokens") or 0),
              int(usage.get("output_tokens") or 0))
    if not text and finish != "refusal":
        raise empty_answer(finish, billed)
    return Response(
        text=text,
        finish_reason=finish,
        input_tokens=billed[0],
        output_tokens=billed[1],
        model=message.get("model") or "",
        response_id=message.get("id"),
        latency_s=latency,
        rate_limits=limits,
    )


def _limits(headers: Any) -> RateLimitInfo | None:
    def num(name: str) -> int | None:
        v = headers.get(name)
        try:
            return int(v) if v is not None else None
        except ValueError:
            return None

    if "anthropic-ratelimit-requests-limit" not in headers:
        return None
    resets = [parse_reset(headers.get(f"anthropic-ratelimit-{kind}-reset"))
              for kind in ("requests", "tokens", "input-tokens", "output-tokens")
              if num(f"anthropic-ratelimit-{kind}-remaining") == 0]
    return RateLimitInfo(
        limit_requests=num("anthropic-ratelimit-requests-limit"),
        remaining_requests=num("anthropic-ratelimit-requests-remaining"),
        limit_tokens=num("anthropic-ratelimit-tokens-limit"),
        remaining_tokens=num("anthropic-ratelimit-tokens-remaining"),
        limit_input_tokens=num("anthropic-ratelimit-input-tokens-limit"),
        limit_output_tokens=num("anthropic-ratelimit-output-tokens-limit"),
        reset_s=max((r for r in resets if r is not None), default=None),
    )

