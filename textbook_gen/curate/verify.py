"""Verified exercises: run each exercise's solution with its tests in a sandboxed subprocess.

The sandbox is a fresh ``python -I`` in a throwaway directory with a wall-clock limit,
CPU/memory/file-size rlimits, and an audit hook installed before the exercise runs that
refuses sockets, subprocesses, and any file access outside the throwaway directory and
Python's own installation. Where ``unshare -rn`` works, the process also gets an empty
network namespace. Checkers are a registry keyed by language, so others (e.g. numeric
answers with sympy) can be added with ``register_checker``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from textbook_gen.curate.exercises import Exercise, parse_exercises
from textbook_gen.curate.settings import VerifySettings

PRELUDE = r'''
import os, sys
_ROOT = os.path.realpath(os.getcwd())
_ALLOWED = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                 sys.base_exec_prefix)})
_BLOCKED_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "os.fork", "os.forkpty", "pty.spawn", "ctypes.dlopen", "os.kill")

def _inside(path, roots):
    p = os.path.realpath(path)
    return any(p == r or p.startswith(r + os.sep) for r in roots)

def _hook(event, args):
    if event.startswith("socket.") and event != "socket.gethostname":
        raise PermissionError("sandbox: network access is blocked")
    if event in _BLOCKED_EVENTS:
        raise PermissionError(f"sandbox: {event} is blocked")
    if event == "open":
        path, mode, flags = args
        if not isinstance(path, (str, bytes)):
            return
        path = os.fsdecode(path)
        writing = (mode and any(c in mode for c in "wax+")) or (
            flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
        if _inside(path, (_ROOT,)):
            return
        if writing or not _inside(path, _ALLOWED):
            raise PermissionError(f"sandbox: no access to {path} outside the exercise folder")
    if event in ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                 "os.symlink", "os.link", "os.truncate", "shutil.rmtree", "os.utime"):
        path = args[0]
        if isinstance(path, (str, bytes)) and not _inside(os.fsdecode(path), (_ROOT,)):
            raise PermissionError(f"sandbox: {event} outside the exercise folder is blocked")

sys.addaudithook(_hook)
del _hook
with open("exercise.py", encoding="utf-8") as _f:
    _code = compile(_f.read(), "exercise.py", "exec")
exec(_code, {"__name__": "__main__"})
'''


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    detail: str  # failure output (tail), or "" when it passed


Checker = Callable[[Exercise, VerifySettings], CheckResult | None]  # None: cannot check
_CHECKERS: dict[str, Checker] = {}


def register_checker(language: str, checker: Checker) -> None:
    _CHECKERS[language] = checker


@functools.cache
def _unshare_works() -> bool:
    """Whether an empty network namespace is available to unprivileged runs here."""
    exe = shutil.which("unshare")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _limits(s: VerifySettings) -> Callable[[], None]:
    def apply() -> None:
        import resource

        memory = s.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(s.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 1024 * 1024, 10 * 1024 * 1024))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setsid()  # its own process group, so a timeout kills everything it started

    return apply


def run_python(code: str, s: VerifySettings) -> CheckResult:
    """Run ``code`` in the sandbox; passed means exit status 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="tbg-exercise-") as tmp:
        with open(os.path.join(tmp, "exercise.py"), "w", encoding="utf-8") as f:
            f.write(code)
        cmd = [sys.executable, "-I", "-c", PRELUDE]
        if _unshare_works():
            cmd = ["unshare", "-rn", *cmd]
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "HOME": tmp, "TMPDIR": tmp}
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                                  timeout=s.timeout_s, preexec_fn=_limits(s), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            out = (e.stderr or b"")[-500:]
            tail = out.decode("utf-8", "replace") if isinstance(out, bytes) else out
            return CheckResult(False, f"timed out after {s.timeout_s:g} s\n{tail}".strip())
    if proc.returncode == 0:
        return CheckResult(True, "")
    tail = (proc.stderr or proc.stdout)[-1500:].strip()
    if proc.returncode < 0:
        tail = f"killed by signal {-proc.returncode} (limits: {s.memory_mb} MB, " \
               f"{s.timeout_s:g} s)\n{tail}"
    return CheckResult(False, tail or f"exit status {proc.returncode}")


def check_python(ex: Exercise, s: VerifySettings) -> CheckResult | None:
    if not ex.has_code:
        return None
    return run_python(f"{ex.solution_code}\n\n# --- tests ---\n{ex.tests_code}\n", s)


register_checker("python", check_python)
register_checker("py", check_python)


@dataclass(frozen=True)
class DocumentVerdict:
    keep: bool
    text: str  # possibly with failing exercises removed
    total: int  # exercises with a checker
    passed: int
    failures: list[str]


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
    failures = [f"{ex.text.splitlines()[0].strip()}: {r.detail}" for ex, r in results if not r.passed]
    passed = len(results) - len(failures)
    if not failures:
        return DocumentVerdict(True, text, len(results), passed, [])
    if passed == 0 or not s.keep_partial:
        return DocumentVerdict(False, text, len(results), passed, failures)
    failed_blocks = {ex.text for ex, r in results if not r.passed}
    kept = [ex.text.rstrip() for ex in exercises if ex.text not in failed_blocks]
    preamble = text[: text.find(exercises[0].text)].rstrip()
    new_text = "\n\n".join([p for p in [preamble] if p] + kept) + "\n"
    return DocumentVerdict(True, new_text, len(results), passed, failures)


def verify_records(records: list[dict[str, Any]], s: VerifySettings) -> list[DocumentVerdict | None]:
    """Verify many documents in parallel (each exercise is its own process)."""
    workers = s.workers or os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda r: verify_document(r.get("text", ""), s), records))
