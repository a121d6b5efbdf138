"""OpenAI chat completions through the official SDK; also vLLM, llama.cpp server, Ollama via base_url."""

from __future__ import annotations

from typing import Any

from textbook_gen.errors import ProviderError
from textbook_gen.providers._http import HTTPProvider
from textbook_gen.providers.base import (
    RateLimitInfo,
    Request,
    Response,
    empty_answer,
    parse_reset,
    sent_seed,
)

_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter",
           "tool_calls": "stop", "function_call": "stop"}
# Reasoning models take max_completion_tokens and no sampling parameters.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


class OpenAIProvider(HTTPProvider):
    name = "openai"
    key_env_var = "OPENAI_API_KEY"
    sdk = "openai"
    client_class = "AsyncOpenAI"
    path = "/chat/completions"

    def request_body(self, req: Request) -> dict[str, Any]:
        """The JSON body for /v1/chat/completions (also used for Batch API lines)."""
        p = req.param
        body: dict[str, Any] = {
            "model": req.model,
            "messages": [{"role": r, "content": c} for r, c in req.messages],
        }
        if req.model.startswith(_REASONING_PREFIXES):
            body["max_completion_tokens"] = p["max_tokens"]
        else:
            body["max_tokens"] = p["max_tokens"]
            for name in ("temperature", "top_p"):
                if name in p:
                    body[name] = p[name]
            if "seed" in p:
                body["seed"] = sent_seed(p["seed"])
        return body

    @staticmethod
    def parse(data: dict[str, Any], latency: float, limits: RateLimitInfo | None) -> Response:
        return parse_completion(data, latency, limits)

    @staticmethod
    def limits(headers: Any) -> RateLimitInfo | None:
        return _limits(headers)


def parse_completion(completion: dict[str, Any], latency: float = 0.0,
                     limits: RateLimitInfo | None = None) -> Response:
    """ChatCompletion (JSON body, also a Batch API output line's) -> Response. An answer
    without text raises ``ProviderError`` carrying the usage billed for it."""
    usage = completion.get("usage") or {}
    billed = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    choices = completion.get("choices") or []
    if not choices:
        raise ProviderError("response has no choices", kind="empty", usage=billed)
    choice = choices[0]
    message = choice.get("message")
    refusal = message.get("refusal") if message is not None else None
    text = (message.get("content") if message is not None else None) or ""
    finish = _FINISH.get(choice.get("finish_reason") or "stop", "stop")
    if refusal:
        finish, text = "refusal", refusal
    if not text:
        raise empty_answer(finish, billed)
    return Response(
        text=text,
        finish_reason=finish,
        input_tokens=billed[0],
        output_tokens=billed[1],
        model=completion.get("model") or "",
        response_id=completion.get("id"),
        latency_s=latency,
        rate_limits=limits,
    )


def _int(headers: Any, name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _limits(headers: Any) -> RateLimitInfo | None:
    if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
        return None
    remaining_requests = _int(headers, "x-ratelimit-remaining-requests")
    remaining_tokens = _int(headers, "x-ratelimit-remaining-tokens")
    resets = [parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
              for kind, left in (("requests", remaining_requests), ("tokens", remaining_tokens))
              if left == 0]
    return RateLimitInfo(
        limit_requests=_int(headers, "x-ratelimit-limit-requests"),
        remaining_requests=remaining_requests,
        limit_tokens=_int(headers, "x-ratelimit-limit-tokens"),
        remaining_tokens=remaining_tokens,
        reset_s=max((r for r in resets if r is not None), default=None),
    )

