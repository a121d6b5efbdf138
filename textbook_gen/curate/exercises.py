"""Parse the exercise structure the templates ask for: problem, solution code, tests, answer.

    ## Exercise 1            (any heading level, "Exercise" or "Problem")
    <problem>
    ### Solution             ```python fenced code```
    ### Tests                ```python fenced asserts```
    ### Answer               (non-code exercises: a short final answer)

An exercise is a markdown section: it ends at the next exercise, or at the first heading of
its own level or above after its last Solution/Tests/Answer heading (what follows, a summary,
is the document's, not the exercise's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EXERCISE = re.compile(r"^(#{1,6})\s*(?:\*\*)?\s*(?:exercise|problem)\b.*$", re.I | re.M)
_SECTION = re.compile(r"^#{1,6}\s*(?:\*\*)?\s*(solution|tests?|answer)\b.*$", re.I | re.M)
_HEADING = re.compile(r"^(#{1,6})\s.*$", re.M)
_PYTHON = {"python", "py", "python3", "py3"}  # fence tags that mean Python
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.S)


@dataclass(frozen=True)
class Exercise:
    text: str  # the whole block, heading included
    start: int  # where the block is in the document: text == document[start:end]
    end: int
    problem: str
    solution_code: str | None
    solution_lang: str | None
    tests_code: str | None
    answer: str | None

    @property
    def has_code(self) -> bool:
        return bool(self.solution_code and self.tests_code)


def parse_exercises(text: str) -> list[Exercise]:
    heads = list(_EXERCISE.finditer(text))
    fences = [m.span() for m in _FENCE.finditer(text)]
    out = []
    for head, after in zip(heads, [*heads[1:], None], strict=False):
        limit = after.start() if after else len(text)
        out.append(_parse_block(text, head.start(), _block_end(text, head, limit, fences)))
    return out


def _block_end(text: str, head: re.Match[str], limit: int, fences: list[tuple[int, int]]
               ) -> int:
    """The first heading of the exercise's level or above after its last section heading
    (a ``#`` line inside a code fence is a comment, not a heading)."""
    def headings(pattern: re.Pattern[str], start: int) -> list[re.Match[str]]:
        return [m for m in pattern.finditer(text, start, limit)
                if not any(a <= m.start() < b for a, b in fences)]

    level = len(head.group(1))
    sections = headings(_SECTION, head.end())
    body_from = sections[-1].end() if sections else head.end()
    for m in headings(_HEADING, body_from):
        if len(m.group(1)) <= level:
            return m.start()
    return limit


def _parse_block(text: str, start: int, end: int) -> Exercise:
    block = text[start:end]
    sections = list(_SECTION.finditer(block))
    head_end = block.find("\n") + 1 if "\n" in block else len(block)
    problem_end = sections[0].start() if sections else len(block)
    parts: dict[str, str] = {}
    for i, m in enumerate(sections):
        section_end = sections[i + 1].start() if i + 1 < len(sections) else len(block)
        name = m.group(1).lower().rstrip("s") if m.group(1).lower() != "tests" else "test"
        parts.setdefault(name, block[m.end():section_end])
    solution_code = lang = tests_code = None
    if "solution" in parts:
        fence = _FENCE.search(parts["solution"])
        if fence:
            lang = (fence.group(1) or "python").lower()
            lang = "python" if lang in _PYTHON else lang
            solution_code = fence.group(2)
    if "test" in parts:
        fence = _FENCE.search(parts["test"])
        if fence:
            tests_code = fence.group(2)
    answer = parts["answer"].strip() if "answer" in parts else None
    return Exercise(block, start, end, block[head_end:problem_end].strip(), solution_code, lang,
                    tests_code, answer or None)
