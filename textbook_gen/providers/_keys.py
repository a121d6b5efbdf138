"""API keys come from environment variables; a missing one is a clear error before any work."""

from __future__ import annotations

import os

from textbook_gen.errors import ConfigError
from textbook_gen.spec import ModelSettings


def api_key(settings: ModelSettings, default_env: str, *, optional: bool = False) -> str | None:
    env = settings.api_key_env or default_env
    key = os.environ.get(env)
    if key:
        return key
    if optional:
        return None
    raise ConfigError(
        f"{env} is not set: the {settings.provider} provider needs an API key.\n"
        f"  fix: export {env}=...   (or name another variable with model.api_key_env in the spec)"
    )
