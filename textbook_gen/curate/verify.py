"""Verified exercises, second stage of curation: run each exercise's solution with its tests
in the sandbox (``sandbox.py``) and keep the exercises that pass. Where no sandbox may run,
the first exercise raises ``ConfigError`` and none runs.

Checkers are a registry keyed by the solution's language, so others (e.g. numeric answers
checked with sympy) can be added with ``register_checker``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from textbook_gen.curate.exercises import Exercise, parse_exercises
from textbook_gen.curate.sandbox import EXERCISE_FAILED, NO_TESTS_RAN, CheckResult, run_python
from textbook_gen.curate.settings import VerifySettings

__all__ = ["CheckResult", "DocumentVerdict", "register_checker", "run_python", "verify_document",
           "verify_records"]

Checker = Callable[[Exercise, VerifySettings], CheckResult | None]  # None: cannot check
_CHECKERS: dict[str, Checker] = {}


def register_checker(language: str, checker: Checker) -> None:
    _CHECKERS[language] = checker


def check_python(ex: Exercise, s: VerifySettings) -> CheckResult | None:
    if not ex.has_code:
        return None
    assert ex.solution_code is not None and ex.tests_code is not None
    return run_python(ex.tests_code, s, solution=ex.solution_code)


register_checker("python", check_python)  # parse_exercises names py, py3, python3 "python"


@dataclass(frozen=True)
class DocumentVerdict:
    keep: bool
    text: str  # possibly with failing exercises removed
    total: int  # exercises with a checker
    passed: int
    failures: list[str]
    # why it is rejected: NO_TESTS_RAN when no failing exercise's tests ran any assertion,
    # else EXERCISE_FAILED; "" when kept
    reason: str = ""


def verify_document(text: str, s: VerifySettings) -> DocumentVerdict | None:
    """Check every exercise a checker exists for; None when nothing in it is checkable."""
    exercises = parse_exercises(text)
    results: list[tuple[Exercise, CheckResult]] = []
    for ex in exercises:
        checker = _CHECKERS.get(ex.solution_lang or "")
        result = checker(ex, s) if checker else None
        if result is not None:
            results.append((ex, result))
    if not results:
        return None
    failed = [(ex, r) for ex, r in results if not r.passed]
    failures = [f"{ex.text.splitlines()[0].strip()}: {r.detail}" for ex, r in failed]
    passed = len(results) - len(failures)
    if not failures:
        return DocumentVerdict(True, text, len(results), passed, [])
    if passed == 0 or not s.keep_partial:
        reason = (NO_TESTS_RAN if all(r.reason == NO_TESTS_RAN for _, r in failed)
                  else EXERCISE_FAILED)
        return DocumentVerdict(False, text, len(results), passed, failures, reason)
    # cut out the failing exercises' blocks; the prose between and after them stays
    pieces, at = [], 0
    for ex, _ in sorted(failed, key=lambda f: f[0].start):
        pieces.append(text[at:ex.start])
        at = ex.end
    pieces.append(text[at:])
    kept = [p.lstrip("\n").rstrip() for p in pieces]
    new_text = "\n\n".join(p for p in kept if p) + "\n"
    return DocumentVerdict(True, new_text, len(results), passed, failures)


Verdicts = dict[bytes, "DocumentVerdict | None"]  # a text's digest -> its verdict


def verify_records(records: list[dict[str, Any]], s: VerifySettings,
                   memo: Verdicts | None = None) -> list[DocumentVerdict | None]:
    """Verify many documents in parallel (each exercise is its own process). A text is
    checked once: the same text again (a duplicate, or with ``memo``, one a previous call
    checked: the closed loop curates every stored answer each round) takes the verdict
    already given. Where exercises may not run (no working bubblewrap and
    ``allow_unsandboxed`` off), the first document with one raises ``ConfigError`` before any
    of them runs."""
    memo = {} if memo is None else memo
    texts = [r.get("text", "") for r in records]
    keys = [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts]
    todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in memo}
    workers = s.workers or os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (k, t), v in zip(todo.items(), pool.map(lambda t: verify_document(t, s),
                                                     todo.values()), strict=True):
            # the memo holds a text only where verification changed it ("" never is one)
            memo[k] = replace(v, text="") if v is not None and v.text == t else v
    out: list[DocumentVerdict | None] = []
    for k, t in zip(keys, texts, strict=True):
        v = memo[k]
        out.append(replace(v, text=t) if v is not None and v.text == "" else v)
    return out
