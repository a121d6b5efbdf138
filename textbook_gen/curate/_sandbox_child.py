"""The harness: the first code a sandboxed interpreter runs (``python -I -S -c <this file>``).

It reads the run's nonce from stdin, lowers its own rlimits, runs the exercise as a module
named ``exercise`` (so an ``if __name__ == "__main__":`` block stays off), then the unittest
cases and zero-argument ``test*`` functions it defined, and only then writes the nonce to the
verdict descriptor. Anything that ends the program sooner (an exception, ``SystemExit``,
``os._exit``, an atexit hook) leaves no nonce there: a failure. argv: exercise file, verdict
descriptor, memory bytes, CPU seconds, file-size bytes, tasks (0: leave as is). Standard
library only; not imported by the package.
"""

import os
import sys

CO_COROUTINE = 0x80
EXIT_FAILED = 1


def set_limits(memory: int, cpu: int, fsize: int, tasks: int) -> None:
    import resource

    limits = [(resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
              (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0),
              (resource.RLIMIT_NOFILE, 256)]
    if tasks:
        limits.append((resource.RLIMIT_NPROC, tasks))
    for what, value in limits:
        resource.setrlimit(what, (value, value))


def takes_no_arguments(f) -> bool:  # noqa: ANN001 - any function
    code = f.__code__
    return (code.co_argcount == len(f.__defaults__ or ())
            and code.co_kwonlyargcount == len(f.__kwdefaults__ or {}))


def run_defined_tests(module) -> None:  # noqa: ANN001 - a module
    """Run what the exercise defined but, as a module, did not run itself: unittest cases
    (the usual ``unittest.main()`` sits under ``if __name__ == "__main__"``) and pytest-style
    ``test*`` functions. Without this a test suite that is never called would pass."""
    import types

    defined = [v for v in list(vars(module).values())
               if getattr(v, "__module__", None) == module.__name__]
    unittest = sys.modules.get("unittest")  # no TestCase exists unless the exercise imported it
    cases = [c for c in defined if isinstance(c, type) and unittest is not None
             and issubclass(c, unittest.TestCase)]
    if cases and unittest is not None:
        loader = unittest.defaultTestLoader
        suite = unittest.TestSuite([loader.loadTestsFromTestCase(c) for c in cases])
        result = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
        if not result.wasSuccessful():
            raise AssertionError("unittest cases failed")
    for f in defined:
        if (isinstance(f, types.FunctionType) and f.__name__.startswith("test")
                and takes_no_arguments(f)):
            if f.__code__.co_flags & CO_COROUTINE:
                import asyncio

                asyncio.run(f())
            else:
                f()


def flush() -> None:
    """What the exercise printed comes before the traceback and the verdict."""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - no import here: this also runs after a MemoryError
            stream.flush()
        except Exception:  # a closed or replaced stream: its output is lost, nothing else
            pass


def main() -> None:
    path, verdict_fd, memory, cpu, fsize, tasks = sys.argv[1], *map(int, sys.argv[2:7])
    nonce = sys.stdin.buffer.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the exercise reads an empty stdin, never the nonce
    os.close(devnull)
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    module = type(sys)("exercise")
    module.__file__ = path
    sys.modules["exercise"] = module
    sys.argv = [path]
    set_limits(memory, cpu, fsize, tasks)
    try:
        exec(code, module.__dict__)
        run_defined_tests(module)
    except SystemExit as e:
        flush()
        print(f"SystemExit({e.code!r}) before every test ran: counted as a failure",
              file=sys.stderr)
        os._exit(EXIT_FAILED)
    except BaseException:
        flush()
        sys.__excepthook__(*sys.exc_info())  # in C: nothing to import under a memory limit
        os._exit(EXIT_FAILED)
    flush()
    os.write(verdict_fd, nonce + b"\n")
    os._exit(0)  # no atexit hook or thread of the exercise runs after the verdict


if __name__ == "__main__":
    main()
