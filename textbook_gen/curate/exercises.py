"""Parse the exercise structure the templates ask for: problem, solution code, tests, answer.

    ## Exercise 1            (any heading level, "Exercise" or "Problem")
    <problem>
    ### Solution             ```python fenced code```
    ### Tests                ```python fenced asserts```
    ### Answer               (non-code exercises: a short final answer)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EXERCISE = re.compile(r"^#{1,6}\s*(?:\*\*)?\s*(?:exercise|problem)\b.*$", re.I | re.M)
_SECTION = re.compile(r"^#{1,6}\s*(?:\*\*)?\s*(solution|tests?|answer)\b.*$", re.I | re.M)
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.S)


@dataclass(frozen=True)
class Exercise:
    text: str  # the whole block, heading included
    problem: str
    solution_code: str | None
    solution_lang: str | None
    tests_code: str | None
    answer: str | None

    @property
    def has_code(self) -> bool:
        return bool(self.solution_code and self.tests_code)


def parse_exercises(text: str) -> list[Exercise]:
    starts = [m.start() for m in _EXERCISE.finditer(text)]
    if not starts:
        return []
    blocks = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    return [_parse_block(b) for b in blocks]


def _parse_block(block: str) -> Exercise:
    sections = list(_SECTION.finditer(block))
    head_end = block.find("\n") + 1 if "\n" in block else len(block)
    problem_end = sections[0].start() if sections else len(block)
    parts: dict[str, str] = {}
    for i, m in enumerate(sections):
        end = sections[i + 1].start() if i + 1 < len(sections) else len(block)
        name = m.group(1).lower().rstrip("s") if m.group(1).lower() != "tests" else "test"
        parts.setdefault(name, block[m.end():end])
    solution_code = lang = tests_code = None
    if "solution" in parts:
        fence = _FENCE.search(parts["solution"])
        if fence:
            lang = (fence.group(1) or "python").lower()
            solution_code = fence.group(2)
    if "test" in parts:
        fence = _FENCE.search(parts["test"])
        if fence:
            tests_code = fence.group(2)
    answer = parts["answer"].strip() if "answer" in parts else None
    return Exercise(block, block[head_end:problem_end].strip(), solution_code, lang, tests_code,
                    answer or None)
