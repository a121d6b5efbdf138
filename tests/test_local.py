"""The embedded local model writes real text through llama.cpp (needs the `local` extra)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import needs_local_model

from textbook_gen.errors import ConfigError
from textbook_gen.providers.base import Request
from textbook_gen.providers.local import LocalProvider, model_path
from textbook_gen.spec import ModelSettings


@needs_local_model
def test_bundled_model_writes_text():
    provider = LocalProvider(ModelSettings(provider="local", max_tokens=24))
    req = Request.build("local", "smollm2-135m-instruct",
                        [("user", "Write one sentence about the moon.")],
                        {"max_tokens": 24, "temperature": 0.0, "seed": 1})
    resp = asyncio.run(provider.complete(req))
    assert len(resp.text.split()) >= 3
    assert 0 < resp.output_tokens <= 24
    assert resp.input_tokens > 5
    assert resp.finish_reason in ("stop", "length")
    again = asyncio.run(provider.complete(req))
    assert again.text == resp.text  # temperature 0 and a fixed seed: reproducible
    asyncio.run(provider.aclose())


def test_unknown_local_model_name_is_a_config_error():
    with pytest.raises(ConfigError, match="neither a bundled model"):
        model_path("gpt-4o")
    with pytest.raises(ConfigError, match="does not exist"):
        model_path("/nowhere/model.gguf")
