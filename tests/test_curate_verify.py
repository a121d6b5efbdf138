"""Verified exercises run in a real sandboxed subprocess with limits."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

from sandbox_helpers import needs_bwrap

from textbook_gen.curate.exercises import parse_exercises
from textbook_gen.curate.settings import VerifySettings
from textbook_gen.curate.verify import run_python, verify_document, verify_records

S = VerifySettings(timeout_s=5, memory_mb=256)


def exercise(solution: str, tests: str, n: int = 1) -> str:
    return (f"## Exercise {n}\nWrite the function.\n\n### Solution\n```python\n{solution}\n```\n\n"
            f"### Tests\n```python\n{tests}\n```\n")


GOOD = exercise("def add(a, b):\n    return a + b", "assert add(2, 3) == 5\nassert add(-1, 1) == 0")
WRONG = exercise("def mul(a, b):\n    return a + b", "assert mul(2, 3) == 6", 2)


def test_parse_exercises():
    ex = parse_exercises("Intro\n\n" + GOOD + "\n" + WRONG + "\n## Exercise 3\nWhat is 2+2?\n"
                         "### Answer\n4\n")
    assert len(ex) == 3
    assert ex[0].has_code and "return a + b" in ex[0].solution_code
    assert ex[2].answer == "4" and not ex[2].has_code


@needs_bwrap
def test_correct_exercise_is_verified():
    v = verify_document(GOOD, S)
    assert v.keep and v.passed == v.total == 1 and not v.failures


@needs_bwrap
def test_wrong_exercise_is_rejected_with_its_failure():
    v = verify_document(WRONG, S)
    assert not v.keep and v.passed == 0
    assert "AssertionError" in v.failures[0]


@needs_bwrap
def test_partial_document_keeps_only_passing_exercises():
    v = verify_document(GOOD + "\n" + WRONG, S)
    assert v.keep and v.total == 2 and v.passed == 1
    assert "def add" in v.text and "def mul" not in v.text
    strict = verify_document(GOOD + "\n" + WRONG, VerifySettings(timeout_s=5, keep_partial=False))
    assert not strict.keep


@needs_bwrap
def test_infinite_loop_is_stopped_by_the_time_limit():
    r = run_python("while True:\n    pass\n", VerifySettings(timeout_s=1))
    assert not r.passed and ("timed out" in r.detail or "signal" in r.detail)


@needs_bwrap
def test_memory_hog_is_stopped_by_the_memory_limit():
    r = run_python("x = bytearray(2 * 1024 * 1024 * 1024)\n", S)
    assert not r.passed and "MemoryError" in r.detail


@needs_bwrap
def test_no_network_from_an_exercise():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        with contextlib.suppress(OSError):  # the timeout: nobody connected, as it should be
            accepted.append(server.accept())

    t = threading.Thread(target=accept)
    t.start()
    r = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
                   S)
    t.join()
    server.close()
    assert not r.passed  # its own network namespace: nobody listens on its loopback
    assert accepted == []


@needs_bwrap
def test_no_file_outside_the_throwaway_directory(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    r = run_python(f"print(open({str(secret)!r}).read())\n", S)
    assert not r.passed and "FileNotFoundError" in r.detail and "do not read" not in r.detail
    target = tmp_path / "written.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('x')\n", S)
    assert not r.passed and not target.exists()
    # a shell runs, but what it touches is the sandbox's own /tmp
    name = f"/tmp/tbg-escape-{time.time_ns()}"
    r = run_python(f"import os\nassert os.system('touch {name}') == 0\n"
                   f"assert os.path.exists({name!r})\n", S)
    assert r.passed, r.detail
    assert not Path(name).exists()
    # inside its own folder it may read and write freely
    assert run_python("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read()"
                      " == 'ok'\n", S).passed


@needs_bwrap
def test_documents_are_verified_in_parallel_and_answered_in_order():
    docs = [{"text": GOOD if i % 2 == 0 else WRONG} for i in range(6)]
    verdicts = verify_records(docs, VerifySettings(timeout_s=10, workers=3))
    assert [v.keep for v in verdicts] == [True, False, True, False, True, False]


def test_documents_without_exercises_need_no_sandbox(tmp_path):
    s = VerifySettings(bwrap=str(tmp_path / "missing"))
    assert verify_records([{"text": "## Loops\nNo exercises here."}], s) == [None]
    assert verify_records([], s) == []


@needs_bwrap
def test_keep_partial_keeps_the_prose_after_a_failing_last_exercise():
    doc = ("# Adding numbers\nIntro prose.\n\n" + GOOD + "\n" + WRONG
           + "\n## Summary\nAddition is commutative; closing prose.\n")
    v = verify_document(doc, S)
    assert v.keep and v.passed == 1 and v.total == 2
    assert "Intro prose." in v.text and "def add" in v.text
    assert "def mul" not in v.text and "## Exercise 2" not in v.text
    assert "## Summary\nAddition is commutative; closing prose." in v.text


def test_an_exercise_block_ends_at_the_next_heading_of_its_level_not_at_a_code_comment():
    doc = ("## Exercise 1\nWrite.\n\n### Solution\n```python\n# a comment, not a heading\n"
           "def f():\n    return 1\n```\n\n### Tests\n```python\n# check it\nassert f() == 1\n```\n"
           "\nA note on the exercise.\n\n## Summary\nThe end.\n")
    [ex] = parse_exercises(doc)
    assert ex.text.endswith("A note on the exercise.\n\n")
    assert doc[ex.end:] == "## Summary\nThe end.\n"
    assert "# check it" in ex.tests_code


@needs_bwrap
def test_a_python3_fence_is_verified_as_python():
    for tag in ("python3", "py3", "py"):
        wrong = WRONG.replace("```python\ndef mul", f"```{tag}\ndef mul")
        assert f"```{tag}\n" in wrong
        v = verify_document(wrong, S)
        assert v is not None and not v.keep, tag


NO_ASSERTION = exercise("def add(a, b):\n    return a + b", "print(add(2, 3))", 3)
PARAMETRIZED = exercise("def add(a, b):\n    return a + b",
                        "def test_add(a, b):\n    assert add(a, b) == a + b", 4)


@needs_bwrap
def test_a_document_whose_tests_run_nothing_is_rejected_as_no_tests_ran():
    v = verify_document(NO_ASSERTION + "\n" + PARAMETRIZED, S)
    assert not v.keep and v.passed == 0 and v.reason == "no_tests_ran"
    assert all("no_tests_ran" in f for f in v.failures)
    mixed = verify_document(NO_ASSERTION + "\n" + WRONG, VerifySettings(timeout_s=5,
                                                                        keep_partial=False))
    assert not mixed.keep and mixed.reason == "exercise_failed"
    partial = verify_document(GOOD + "\n" + NO_ASSERTION, S)
    assert partial.keep and "print(add(2, 3))" not in partial.text
