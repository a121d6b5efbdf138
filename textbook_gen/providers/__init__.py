"""Provider registry: name -> class, imported on first use so ``--help`` stays fast."""

from __future__ import annotations

import importlib

from textbook_gen.errors import ConfigError
from textbook_gen.providers.base import Provider, RateLimitInfo, Request, Response

_REGISTRY = {
    "local": "textbook_gen.providers.local:LocalProvider",
    "openai": "textbook_gen.providers.openai:OpenAIProvider",
    "anthropic": "textbook_gen.providers.anthropic:AnthropicProvider",
}

__all__ = ["Provider", "RateLimitInfo", "Request", "Response", "provider_class", "names"]


def names() -> list[str]:
    return list(_REGISTRY)


def provider_class(name: str) -> type[Provider]:
    try:
        module, _, attr = _REGISTRY[name].partition(":")
    except KeyError:
        raise ConfigError(f"unknown provider {name!r}; choose one of {', '.join(_REGISTRY)}") from None
    cls: type[Provider] = getattr(importlib.import_module(module), attr)
    return cls
