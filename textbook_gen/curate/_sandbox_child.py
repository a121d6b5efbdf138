"""The harness: the first code a sandboxed interpreter runs (``python -I -S -c <this file>``).

It reads the run's nonce from stdin, lowers its own rlimits, runs the solution as a module
named ``exercise`` (its ``if __name__ == "__main__":`` block stays off), then the tests in the
same namespace as the main program, then the tests they defined but did not run: unittest
cases, pytest-style functions and ``Test*`` classes, generator tests, HumanEval's uncalled
``check(candidate)``. Every ``assert`` of the tests is rewritten to report to the harness,
and unittest's assertion methods are counted, so the verdict rests on evidence: ``pass`` when
at least one assertion of the tests executed and none failed, ``no_tests_ran`` when none
executed. Only then is the nonce and that word written to the verdict descriptor; anything
that ends the program sooner (an exception, ``SystemExit``, ``os._exit``, an atexit hook)
leaves nothing there: a failure. argv: solution file, tests file, verdict descriptor, memory
bytes, CPU seconds, file-size bytes, tasks (0: leave as is). Standard library only (``_ast``,
not ``ast``, whose imports would cost each exercise milliseconds); not imported by the package.
"""

import _ast
import os
import sys

CO_GENERATOR = 0x20
CO_COROUTINE = 0x80
CO_ASYNC_GENERATOR = 0x200
EXIT_FAILED = 1
# what the rewritten asserts call: names that no source text can spell, so no test shadows or
# sets them by accident
PASSED = "assert passed"
FAILED = "assert failed"


class Evidence:
    """What the tests' assertions did, as the harness saw it."""

    def __init__(self) -> None:
        self.executed = 0
        self.failed = 0
        self.not_run: list[str] = []

    def passed(self) -> None:
        self.executed += 1

    def failure(self, *message: object) -> AssertionError:
        """Counted even where the tests catch the AssertionError they then raise."""
        self.executed += 1
        self.failed += 1
        return AssertionError(*message)


def set_limits(memory: int, cpu: int, fsize: int, tasks: int) -> None:
    import resource

    limits = [(resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
              (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0),
              (resource.RLIMIT_NOFILE, 256)]
    if tasks:
        limits.append((resource.RLIMIT_NPROC, tasks))
    for what, value in limits:
        resource.setrlimit(what, (value, value))


# -- the tests' asserts report to the harness

def rewrite_asserts(node):  # noqa: ANN001, ANN201 - an _ast node
    """``assert test, msg`` becomes ``if test: <passed>()`` / ``else: raise <failed>(msg)``,
    with the assert's position, so a failure's traceback still shows the test's line."""
    for field in node._fields:
        value = getattr(node, field, None)
        if isinstance(value, list):  # statements live only in lists (bodies, handlers, cases)
            value[:] = [checked(v) if isinstance(v, _ast.Assert)
                        else rewrite_asserts(v) if isinstance(v, _ast.AST) else v for v in value]
        elif isinstance(value, _ast.AST):
            rewrite_asserts(value)
    return node


def checked(statement):  # noqa: ANN001, ANN201 - an _ast.Assert
    rewrite_asserts(statement.test)  # a lambda in it may hold no statement, but stay uniform
    at = {"lineno": statement.lineno, "col_offset": statement.col_offset,
          "end_lineno": statement.end_lineno, "end_col_offset": statement.end_col_offset}

    def call(name, args):  # noqa: ANN001, ANN202
        return _ast.Call(_ast.Name(name, _ast.Load(), **at), args, [], **at)

    message = [statement.msg] if statement.msg is not None else []
    return _ast.If(statement.test, [_ast.Expr(call(PASSED, []), **at)],
                   [_ast.Raise(call(FAILED, message), None, **at)], **at)


def calls_name(node, name: str) -> bool:  # noqa: ANN001 - an _ast node
    if (isinstance(node, _ast.Call) and isinstance(node.func, _ast.Name)
            and node.func.id == name):
        return True
    for field in node._fields:
        value = getattr(node, field, None)
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, _ast.AST) and calls_name(child, name):
                return True
    return False


# -- unittest: its assertion methods count, and unittest.main() leaves running to the harness

class UnittestWatch:
    """A finder that lets ``unittest`` load as usual, then instruments it, whenever the
    exercise imports it (importing it up front would cost every exercise ~15 ms)."""

    def __init__(self, evidence: Evidence):
        self.evidence = evidence

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        patch = {"unittest.case": self.count_assertions, "unittest.main": self.defer_main}.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                load = spec.loader.exec_module

                def exec_module(module, load=load, patch=patch):  # noqa: ANN001, ANN202
                    load(module)
                    patch(module)

                spec.loader.exec_module = exec_module
                return spec
        return None

    def count_assertions(self, case) -> None:  # noqa: ANN001 - unittest.case
        import types

        evidence = self.evidence
        for name, method in list(vars(case.TestCase).items()):
            if isinstance(method, types.FunctionType) and name.startswith(("assert", "fail")):

                def assertion(*args, __method=method, **kwargs):  # noqa: ANN002, ANN003, ANN202
                    evidence.executed += 1
                    try:
                        return __method(*args, **kwargs)
                    except AssertionError:
                        evidence.failed += 1
                        raise

                assertion.__name__ = assertion.__qualname__ = name
                assertion.__doc__ = method.__doc__
                setattr(case.TestCase, name, assertion)

    @staticmethod
    def defer_main(main) -> None:  # noqa: ANN001 - unittest.main, the module
        def deferred(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
            """The harness runs every TestCase the tests defined, once, after the tests."""

        main.main = deferred


# -- what the tests defined but did not run

def required_arguments(f) -> int:  # noqa: ANN001 - a function or bound method
    function = getattr(f, "__func__", f)
    code = function.__code__
    positional = code.co_argcount - len(function.__defaults__ or ()) - (f is not function)
    keyword = code.co_kwonlyargcount - len(function.__kwdefaults__ or {})
    return max(positional, 0) + max(keyword, 0)


def run_test(f, label: str, evidence: Evidence) -> None:  # noqa: ANN001 - a callable
    """A pytest-style test: a plain, async or generator function (a generator yields the
    checks to run: ``(callable, *args)`` or a callable). One that needs arguments (pytest
    fixtures or parameters) cannot be called: it is not run."""
    if required_arguments(f):
        evidence.not_run.append(f"{label} takes arguments (fixtures or parameters): not run")
        return
    flags = getattr(f, "__func__", f).__code__.co_flags
    if flags & CO_COROUTINE:
        import asyncio

        asyncio.run(f())
    elif flags & CO_ASYNC_GENERATOR:
        evidence.not_run.append(f"{label} is an async generator: not run")
    elif flags & CO_GENERATOR:
        for item in f():
            if isinstance(item, tuple) and item and callable(item[0]):
                item[0](*item[1:])
            elif callable(item):
                item()
    else:
        f()


def run_test_class(cls: type, evidence: Evidence) -> None:
    """A pytest-style ``Test*`` class: a fresh instance per ``test*`` method, with its
    ``setup_method``/``teardown_method``; pytest does not collect a class with an __init__."""
    if any("__init__" in vars(c) for c in cls.__mro__ if c is not object):
        evidence.not_run.append(f"class {cls.__name__} has an __init__: not run")
        return
    names = {n: None for c in reversed(cls.__mro__) for n in vars(c) if n.startswith("test")}
    for name in names:
        instance = cls()
        method = getattr(instance, name)
        if not callable(method):
            continue
        fixture(instance, "setup_method", method)
        try:
            run_test(method, f"{cls.__name__}.{name}", evidence)
        finally:
            fixture(instance, "teardown_method", method)


def fixture(instance: object, name: str, method) -> None:  # noqa: ANN001 - a bound method
    """pytest's ``setup_method(self, method)``, where the class has one."""
    hook = getattr(instance, name, None)
    if callable(hook):
        hook(*[method][:required_arguments(hook)])


def entry_point(module, solution_path: str):  # noqa: ANN001, ANN201
    """The function HumanEval's ``check(candidate)`` is given: the last one the solution
    defines (helpers come before it, as in HumanEval's own prompts)."""
    import types

    functions = [f for f in vars(module).values() if isinstance(f, types.FunctionType)
                 and f.__code__.co_filename == solution_path]
    return max(functions, key=lambda f: f.__code__.co_firstlineno, default=None)


def run_defined_tests(module, paths: tuple[str, str], evidence: Evidence,  # noqa: ANN001
                      check_called: bool) -> None:
    import types

    solution_path, tests_path = paths
    defined = list(vars(module).items())
    unittest = sys.modules.get("unittest")  # no TestCase exists unless the exercise imported it
    cases = [c for _, c in defined if isinstance(c, type) and unittest is not None
             and issubclass(c, unittest.TestCase) and c.__module__ in ("exercise", "__main__")]
    if cases and unittest is not None:
        loader = unittest.defaultTestLoader
        suite = unittest.TestSuite([loader.loadTestsFromTestCase(c) for c in cases])
        result = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
        if not result.wasSuccessful():
            raise AssertionError("unittest cases failed")
    for name, value in defined:
        if (isinstance(value, type) and name.startswith("Test") and value.__module__ == "__main__"
                and value not in cases):
            run_test_class(value, evidence)
        elif (isinstance(value, types.FunctionType) and name.startswith("test")
              and value.__code__.co_filename == tests_path):
            run_test(value, name, evidence)
    check = vars(module).get("check")
    if (not check_called and isinstance(check, types.FunctionType)
            and check.__code__.co_filename == tests_path):
        candidate = entry_point(module, solution_path)
        if candidate is None or required_arguments(check) != 1:
            evidence.not_run.append("check(candidate) is never called and cannot be: not run")
        else:
            check(candidate)


def flush() -> None:
    """What the exercise printed comes before the traceback and the verdict."""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - no import here: this also runs after a MemoryError
            stream.flush()
        except Exception:  # a closed or replaced stream: its output is lost, nothing else
            pass


def fail(message: str) -> None:
    flush()
    print(message, file=sys.stderr)
    flush()
    os._exit(EXIT_FAILED)


def main() -> None:
    solution_path, tests_path = sys.argv[1:3]
    verdict_fd, memory, cpu, fsize, tasks = map(int, sys.argv[3:8])
    nonce = sys.stdin.buffer.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the exercise reads an empty stdin, never the nonce
    os.close(devnull)
    evidence = Evidence()
    try:
        with open(solution_path, encoding="utf-8") as f:
            solution = compile(f.read(), solution_path, "exec")
        with open(tests_path, encoding="utf-8") as f:
            tree = compile(f.read(), tests_path, "exec", _ast.PyCF_ONLY_AST)
        check_called = calls_name(tree, "check")
        tests = compile(rewrite_asserts(tree), tests_path, "exec")
    except BaseException:  # a syntax error, or code nested past the compiler's limits
        flush()
        sys.__excepthook__(*sys.exc_info())
        os._exit(EXIT_FAILED)
    module = type(sys)("exercise")
    module.__file__ = solution_path
    sys.modules["exercise"] = module
    sys.argv = [tests_path]
    sys.meta_path.insert(0, UnittestWatch(evidence))
    set_limits(memory, cpu, fsize, tasks)
    try:
        exec(solution, module.__dict__)  # as a module: its __name__ is "exercise"
        # the tests are the main program, so their `if __name__ == "__main__":` block runs
        module.__dict__.update({"__name__": "__main__", PASSED: evidence.passed,
                                FAILED: evidence.failure})
        sys.modules["__main__"] = module
        exec(tests, module.__dict__)
        run_defined_tests(module, (solution_path, tests_path), evidence, check_called)
    except SystemExit as e:
        fail(f"SystemExit({e.code!r}) before every test ran: counted as a failure")
    except BaseException:
        flush()
        sys.__excepthook__(*sys.exc_info())  # in C: nothing to import under a memory limit
        os._exit(EXIT_FAILED)
    if evidence.failed:
        fail(f"{evidence.failed} assertion(s) of the tests failed (the tests caught the error)")
    flush()
    if evidence.executed:
        status = b"pass"
    else:
        status = b"no_tests_ran"
        print("no_tests_ran: no assertion of the tests executed", *evidence.not_run,
              sep="\n", file=sys.stderr)
        flush()
    os.write(verdict_fd, nonce + b" " + status + b"\n")
    os._exit(0)  # no atexit hook or thread of the exercise runs after the verdict


if __name__ == "__main__":
    main()
