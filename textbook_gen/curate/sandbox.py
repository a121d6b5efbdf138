"""The exercise sandbox: run a piece of Python in a fresh, confined interpreter and report
whether it exited cleanly. Used by the checkers in ``verify``.

Layers, each covering for the others: a throwaway directory as cwd and HOME; a clean
environment; ``python -I``; rlimits on address space, CPU time, file size and core dumps;
Landlock (Linux >= 5.13) confining file access to the directory (reads also to Python's
installation and /usr, /lib) and forbidding TCP; an audit hook refusing sockets, processes,
ctypes and outside paths; an empty network namespace (``unshare -rn``) where permitted; a
wall-clock timeout that kills the process group. The child side is ``_sandbox_child.py``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from textbook_gen.curate.settings import VerifySettings

CHILD = Path(__file__).with_name("_sandbox_child.py")
FILE_SIZE_LIMIT = 10 * 1024 * 1024
OUTPUT_TAIL = 1500


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    detail: str  # failure output (tail), or "" when it passed


@functools.cache
def unshare_works() -> bool:
    """Whether an empty network namespace is available to unprivileged runs here."""
    exe = shutil.which("unshare")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where it has none (then files are guarded by the
    audit hook alone)."""
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    libc.syscall.restype = ctypes.c_long
    return max(0, int(libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))))


def sandbox_layers() -> list[str]:
    """What confines exercises on this machine, for the manifest and the docs."""
    layers = ["rlimits", "audit-hook"]
    if landlock_abi():
        layers.append(f"landlock-abi{landlock_abi()}")
    if unshare_works():
        layers.append("netns")
    return layers


@functools.cache
def _child_code() -> str:
    return CHILD.read_text("utf-8")


def run_python(code: str, s: VerifySettings) -> CheckResult:
    """Run ``code`` in the sandbox; passed means exit status 0 within the limits."""
    memory = s.memory_mb * 1024 * 1024
    cpu = int(s.timeout_s) + 1
    with tempfile.TemporaryDirectory(prefix="tbg-exercise-") as tmp:
        Path(tmp, "exercise.py").write_text(code, encoding="utf-8")
        cmd = [sys.executable, "-I", "-c", _child_code(), str(memory), str(cpu), str(FILE_SIZE_LIMIT)]
        if unshare_works():
            cmd = ["unshare", "-rn", *cmd]
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "HOME": tmp, "TMPDIR": tmp,
               "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        # no preexec_fn: it is unsafe with the verification threads; limits are set by the child
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=s.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            tail = _tail(err or out)
            return CheckResult(False, f"timed out after {s.timeout_s:g} s\n{tail}".strip())
        finally:
            _kill_group(proc)  # anything it left behind in its session
    if proc.returncode == 0:
        return CheckResult(True, "")
    tail = _tail(err or out)
    if proc.returncode < 0:
        tail = f"killed by signal {-proc.returncode} (limits: {s.memory_mb} MB, " \
               f"{s.timeout_s:g} s)\n{tail}"
    return CheckResult(False, tail.strip() or f"exit status {proc.returncode}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    import signal

    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(data: bytes) -> str:
    return data[-OUTPUT_TAIL:].decode("utf-8", "replace")
