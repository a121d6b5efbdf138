"""OpenAI chat completions through the official SDK; also vLLM, llama.cpp server, Ollama via base_url."""

from __future__ import annotations

import time
from typing import Any

from textbook_gen.errors import ProviderError
from textbook_gen.providers._keys import api_key
from textbook_gen.providers.base import (
    Provider,
    RateLimitInfo,
    Request,
    Response,
    post_json,
)
from textbook_gen.spec import ModelSettings

_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter",
           "tool_calls": "stop", "function_call": "stop"}
# Reasoning models take max_completion_tokens and no sampling parameters.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


class OpenAIProvider(Provider):
    name = "openai"
    needs_key = True
    key_env_var = "OPENAI_API_KEY"
    supports_batch = True
    connections_per_client = 64

    def __init__(self, settings: ModelSettings, *, timeout: float = 600.0,
                 base_url: str | None = None):
        super().__init__(settings, timeout=timeout)
        import openai

        # A custom base_url usually means a self-hosted server that takes any key.
        key = api_key(settings, self.key_env_var, optional=base_url is not None)
        self.base_url = base_url
        self.client = openai.AsyncOpenAI(
            api_key=key or "not-needed", base_url=base_url, max_retries=0, timeout=timeout
        )

    @classmethod
    def check_key(cls, settings: ModelSettings) -> None:
        api_key(settings, "OPENAI_API_KEY", optional=bool(settings.base_url))

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
            for name in ("temperature", "top_p", "seed"):
                if name in p:
                    body[name] = p[name]
        return body

    async def complete(self, request: Request) -> Response:
        import openai

        started = time.monotonic()
        data, headers = await post_json(self.client, openai, "/chat/completions", self.request_body(request))
        return parse_completion(data, time.monotonic() - started, _limits(headers))

    async def aclose(self) -> None:
        await self.client.close()


def parse_completion(completion: dict[str, Any], latency: float = 0.0,
                     limits: RateLimitInfo | None = None) -> Response:
    """ChatCompletion (JSON body, also a Batch API output line's) -> Response."""
    choices = completion.get("choices") or []
    if not choices:
        raise ProviderError("response has no choices", kind="empty")
    choice = choices[0]
    message = choice.get("message")
    refusal = message.get("refusal") if message is not None else None
    text = (message.get("content") if message is not None else None) or ""
    finish = _FINISH.get(choice.get("finish_reason") or "stop", "stop")
    if refusal:
        finish, text = "refusal", refusal
    if not text:
        raise ProviderError("response has an empty message", kind="empty")
    usage = completion.get("usage")
    return Response(
        text=text,
        finish_reason=finish,
        input_tokens=(usage.get("prompt_tokens") or 0) if usage else 0,
        output_tokens=(usage.get("completion_tokens") or 0) if usage else 0,
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
    return RateLimitInfo(
        limit_requests=_int(headers, "x-ratelimit-limit-requests"),
        remaining_requests=_int(headers, "x-ratelimit-remaining-requests"),
        limit_tokens=_int(headers, "x-ratelimit-limit-tokens"),
        remaining_tokens=_int(headers, "x-ratelimit-remaining-tokens"),
    )

