"""The exercise sandbox: run model-written Python in a throwaway bubblewrap container and tell
whether its tests passed. Used by the checkers in ``verify``; the threat model and
what holds on which hosts are in docs/sandbox.md.

``BwrapSandbox`` is the boundary: new user, PID, mount, network, IPC and UTS namespaces, an
empty read-only root with only /usr and the Python installation bound in (its site-packages
hidden), a size-capped tmpfs as the one writable place, no nested user namespaces. Where
bubblewrap cannot run, ``sandbox_for`` refuses (``ConfigError``) unless the settings say
``allow_unsandboxed: true``; then ``Unsandboxed`` runs exercises with rlimits alone. Both run
the harness in ``_sandbox_child.py``: a pass is its nonce and ``pass`` on the verdict pipe,
written only when an assertion of the tests executed and none failed; never an exit status.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from textbook_gen.curate.settings import VerifySettings
from textbook_gen.errors import ConfigError

HARNESS = Path(__file__).with_name("_sandbox_child.py")
FILES = ("exercise.py", "tests.py")  # the solution and its tests, as the harness reads them
OUTPUT_KEPT = 64 * 1024  # bytes of output held per run; the rest is read and dropped
DETAIL_CHARS = 1500
SHM_BYTES = 4 * 1024 * 1024  # /dev/shm, for multiprocessing's semaphores
KILL_GRACE_S = 2.0
MIN_BWRAP = (0, 8)
SANDBOX_UID = 65534  # whom the exercise runs as when textbook-gen itself runs as root
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: "
                "sudo dnf install bubblewrap; Arch: sudo pacman -S bubblewrap)")


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock; CPU time is capped at the next second up
    memory_mb: int = 512  # address space per process
    disk_mb: int = 64  # the writable tmpfs, and the size of any one file
    max_processes: int = 64  # processes and threads (RLIMIT_NPROC), inside bwrap only

    @classmethod
    def of(cls, s: VerifySettings) -> Limits:
        return cls(s.timeout_s, s.memory_mb, s.disk_mb, s.max_processes)


PASSED = "pass"
EXERCISE_FAILED = "exercise_failed"
NO_TESTS_RAN = "no_tests_ran"


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    detail: str  # failure output (tail), or "" when it passed
    # why it did not pass: NO_TESTS_RAN (it ran to the end, but no assertion of the tests
    # executed) or EXERCISE_FAILED (anything else); "" when it passed
    reason: str = ""


@dataclass(frozen=True)
class _Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    fds: tuple[int, ...]


class Sandbox:
    """Runs one exercise: ``run(tests, limits, solution) -> CheckResult``. Subclasses say how
    the interpreter is confined (``_launch``) and describe it."""

    strong = False

    def describe(self) -> str:
        """One line for the terminal."""
        raise NotImplementedError

    def layers(self) -> list[str]:
        """What confines exercise code, for the manifest."""
        raise NotImplementedError

    def _launch(self, solution: str, tests: str, limits: Limits, verdict_fd: int
                ) -> contextlib.AbstractContextManager[_Launch]:
        raise NotImplementedError

    def run(self, tests: str, limits: Limits, solution: str = "") -> CheckResult:
        """Run ``solution`` as an imported module, then ``tests`` as the main program in the
        same namespace. It passes when an assertion of ``tests`` (an ``assert`` statement or
        a unittest assertion method) executed and none failed."""
        nonce = secrets.token_hex(16).encode()
        read_end, write_end = os.pipe()
        try:
            with self._launch(solution, tests, limits, write_end) as launch:
                proc = subprocess.Popen(
                    launch.argv, env=launch.env, cwd=launch.cwd, pass_fds=launch.fds,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True)  # one process group to kill, ours excluded
                os.close(write_end)
                write_end = -1
                try:
                    _send_nonce(proc, nonce)
                    output, timed_out = _read_bounded(proc, limits.timeout_s)
                    returncode = _reap(proc)
                finally:
                    _kill_group(proc)
                    assert proc.stdout is not None
                    proc.stdout.close()
                    _reap_adopted_inits()
            os.set_blocking(read_end, False)
            try:
                verdict = os.read(read_end, 256)
            except BlockingIOError:  # a writer still holds it open and wrote nothing
                verdict = b""
        finally:
            os.close(read_end)
            if write_end != -1:
                os.close(write_end)
        status = {nonce + b" pass\n": PASSED, nonce + b" no_tests_ran\n": NO_TESTS_RAN}
        return _judge(status.get(verdict), returncode, timed_out, output, limits)



def _harness_argv(python: str, paths: tuple[str, str], verdict_fd: int, limits: Limits,
                  tasks: int) -> list[str]:
    cpu = math.ceil(limits.timeout_s) + 1
    disk = limits.disk_mb * 1024 * 1024
    return [python, "-I", "-S", "-c", _harness_code(), *paths, str(verdict_fd),
            str(limits.memory_mb * 1024 * 1024), str(cpu), str(disk), str(tasks)]


@functools.cache
def _harness_code() -> str:
    return HARNESS.read_text("utf-8")


def _send_nonce(proc: subprocess.Popen[bytes], nonce: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # it ended before reading: no verdict, a failure
        proc.stdin.write(nonce + b"\n")  # far below a pipe's buffer: never blocks
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()


def _read_bounded(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[bytes, bool]:
    """Read stdout+stderr until every writer is gone, keeping the last ``OUTPUT_KEPT`` bytes.
    At the deadline the process group is killed; whoever still holds the pipe a grace period
    later is no longer waited for."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    kept = bytearray()
    deadline = time.monotonic() + timeout_s
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            if timed_out:
                break
            timed_out = True
            _kill_group(proc)
            deadline = time.monotonic() + KILL_GRACE_S
            continue
        if not poller.poll(left * 1000):
            continue
        data = os.read(fd, 65536)
        if not data:
            break
        kept += data
        del kept[:-OUTPUT_KEPT]
    return bytes(kept), timed_out


def _reap(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:  # its output closed but it lives on: end it
        _kill_group(proc)
    try:
        return proc.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:  # stuck in the kernel; a failure either way
        return -signal.SIGKILL


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)


def _reap_adopted_inits() -> None:
    """Where textbook-gen is PID 1 (a container without an init) it adopts every orphan.
    bwrap's monitor ends as soon as the init of its PID namespace reports the exercise's
    status, without waiting for that init, so each exercise would leave a zombie. Reap them:
    children of ours that are PID 1 of a nested PID namespace, which no code of ours started
    (a process we start is never such an init), so no other waiter's status is taken. The
    init is already ending (its exercise ended, or bwrap's --die-with-parent killed it)."""
    if os.getpid() != 1:
        return
    deadline = time.monotonic() + KILL_GRACE_S
    for pid in _adopted_inits():
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # another thread reaped it
                break
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.002)


def _adopted_inits() -> list[int]:
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):  # gone meanwhile
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) != me:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
            nspids = status.split("\nNSpid:")[1].split("\n")[0].split()
            if len(nspids) > 1 and nspids[-1] == "1":
                found.append(int(entry))
    return found


def _judge(status: str | None, returncode: int, timed_out: bool, output: bytes,
           limits: Limits) -> CheckResult:
    tail = output[-DETAIL_CHARS * 4:].decode("utf-8", "replace")[-DETAIL_CHARS:].strip()
    if timed_out:
        return CheckResult(False, f"timed out after {limits.timeout_s:g} s\n{tail}".strip(),
                           EXERCISE_FAILED)
    if status is not None and returncode == 0:
        return (CheckResult(True, "") if status == PASSED
                else CheckResult(False, tail or NO_TESTS_RAN, NO_TESTS_RAN))
    # bwrap passes on its child's end as the shell does: 128 + the signal
    signum = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else 0
    if signum:
        why = (f"killed by signal {signum} (limits: {limits.memory_mb} MB, "
               f"{math.ceil(limits.timeout_s) + 1} s CPU)")
        return CheckResult(False, f"{why}\n{tail}".strip(), EXERCISE_FAILED)
    if returncode == 0:
        return CheckResult(False, (f"{tail}\nended with status 0 before every test ran "
                                   "(os._exit or an atexit hook)").strip(), EXERCISE_FAILED)
    return CheckResult(False, tail or f"exit status {returncode}", EXERCISE_FAILED)


# -- bubblewrap

@dataclass(frozen=True)
class _Python:
    """The base interpreter (never a virtual environment's, whose packages stay outside)."""

    executable: str
    prefixes: tuple[str, ...]  # to bind read-only, beyond /usr
    hidden: tuple[str, ...]  # site-packages folders within what is bound


@functools.cache
def _base_python() -> _Python:
    import site

    executable = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    prefixes = tuple(sorted(p for p in roots if not _beneath(p, "/usr")))
    bound = ("/usr", *prefixes)
    sites = {os.path.realpath(p) for p in site.getsitepackages(sorted(roots))}
    sites |= {os.path.realpath(sysconfig.get_path(k, vars={"base": r, "platbase": r}))
              for k in ("purelib", "platlib") for r in roots}
    hidden = tuple(sorted(p for p in sites if os.path.isdir(p)
                          and any(_beneath(p, b) for b in bound)))
    return _Python(executable, prefixes, hidden)


def _beneath(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class BwrapSandbox(Sandbox):
    strong = True

    def __init__(self, bwrap: str, setpriv: str | None = None):
        self.bwrap = bwrap
        self.setpriv = setpriv  # set when we are root: the exercise runs as SANDBOX_UID
        self.python = _base_python()

    def describe(self) -> str:
        who = f", as uid {SANDBOX_UID}" if self.setpriv else ""
        return (f"exercises run in {_bwrap_version(self.bwrap)}: new user, pid, mount, net, "
                f"ipc and uts namespaces, read-only /usr and Python, a size-capped /tmp{who}")

    def layers(self) -> list[str]:
        out = [_bwrap_version(self.bwrap), "namespaces: user pid mount net ipc uts",
               "nested user namespaces: off", "root: empty; read-only /usr and Python "
               "(site-packages hidden)", "writable: /tmp and /dev/shm tmpfs, size-capped",
               "rlimits: address space, cpu, file size, processes, files, core"]
        if self.setpriv:
            out.append(f"uid {SANDBOX_UID} (textbook-gen runs as root)")
        return out

    @contextlib.contextmanager
    def _launch(self, solution: str, tests: str, limits: Limits, verdict_fd: int
                ) -> Iterator[_Launch]:
        fds: list[int] = []
        try:
            for name, code in zip(FILES, (solution, tests), strict=True):
                fds.append(os.memfd_create(name))
                os.write(fds[-1], code.encode("utf-8"))
                os.lseek(fds[-1], 0, os.SEEK_SET)
            argv = [*self._privilege_drop(), *self._bwrap_argv(limits, fds),
                    *_harness_argv(self.python.executable, (f"/{FILES[0]}", f"/{FILES[1]}"),
                                   verdict_fd, limits, limits.max_processes)]
            yield _Launch(argv, {}, None, (*fds, verdict_fd))
        finally:
            for fd in fds:
                os.close(fd)

    def _bwrap_argv(self, limits: Limits, code_fds: list[int]) -> list[str]:
        argv = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns",
                "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
                "--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8",
                "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            top = f"/{name}"  # merged-/usr hosts have symlinks here, older ones folders
            if os.path.islink(top):
                argv += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                argv += ["--ro-bind", top, top]
        for prefix in self.python.prefixes:
            argv += ["--ro-bind", prefix, prefix]
        for folder in self.python.hidden:
            argv += ["--tmpfs", folder, "--remount-ro", folder]
        argv += ["--proc", "/proc", "--dev", "/dev",
                 "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
                 "--size", str(limits.disk_mb * 1024 * 1024), "--tmpfs", "/tmp",
                 "--ro-bind-data", str(code_fds[0]), f"/{FILES[0]}",
                 "--ro-bind-data", str(code_fds[1]), f"/{FILES[1]}",
                 "--remount-ro", "/", "--chdir", "/tmp"]
        return argv

    def _privilege_drop(self) -> list[str]:
        """As root, setpriv becomes ``SANDBOX_UID`` and starts the real, unprivileged bwrap:
        model code never runs as root, since root in a user namespace keeps the owner's
        rights on the host's root-owned files, /proc/sys included. Where Python lives below a
        folder that user may not enter (e.g. /root/.pyenv), a first, privileged bwrap gives
        it a way in, in a mount namespace of its own."""
        if not self.setpriv:
            return []
        opening: list[str] = []
        for prefix in self.python.prefixes:
            closed = _first_closed_ancestor(prefix)
            if closed is None:
                continue
            opening += ["--tmpfs", closed]  # over it in that namespace only; the host is untouched
            below = [p for p in reversed(Path(prefix).parents) if _beneath(str(p), closed)]
            for folder in below[1:]:  # made anew on the tmpfs, open to all
                opening += ["--perms", "0755", "--dir", str(folder)]
            opening += ["--ro-bind", prefix, prefix]
        outer = [self.bwrap, "--dev-bind", "/", "/", "--die-with-parent", *opening] if opening else []
        return [*outer, self.setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                "--pdeathsig=SIGKILL", "--"]


def _first_closed_ancestor(path: str) -> str | None:
    """The topmost folder above ``path`` that others may not search (e.g. /root), if any."""
    parts = Path(path).parts
    for i in range(2, len(parts)):
        folder = str(Path(*parts[:i]))
        if not os.stat(folder).st_mode & 0o001:
            return folder
    return None


@functools.cache
def _bwrap_version(bwrap: str) -> str:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "bubblewrap (version unknown)"
    return out.stdout.strip() or "bubblewrap (version unknown)"


@functools.cache
def _bwrap_problem(bwrap: str, setpriv: str | None) -> str | None:
    """Why bubblewrap cannot confine exercises here (its own words), or None when a trial
    exercise ran in it and passed."""
    trial = "import os\nassert os.getppid() == 1 and not os.path.exists('/home')\n"
    result = BwrapSandbox(bwrap, setpriv).run(trial, Limits(timeout_s=30))
    return None if result.passed else (result.detail or "the trial exercise failed")


def bwrap_problem(s: VerifySettings) -> str | None:
    """Why the strong sandbox is unavailable under these settings, or None when it works."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux (this is {sys.platform})"
    bwrap = shutil.which(s.bwrap)
    if bwrap is None:
        return f"{s.bwrap!r} not found" + (" on PATH" if os.sep not in s.bwrap else "")
    version = _bwrap_version(os.path.realpath(bwrap))
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if numbers and numbers < MIN_BWRAP:  # unknown: the trial run below will say what is wrong
        return (f"{version} is too old: the sandbox needs bubblewrap "
                f"{'.'.join(map(str, MIN_BWRAP))} or later (--size, --disable-userns)")
    setpriv = None
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            return "running as root needs setpriv (util-linux) to drop to an unprivileged user"
    return _bwrap_problem(os.path.realpath(bwrap), setpriv)


class Unsandboxed(Sandbox):
    """Only where the settings allow it: the exercise runs as the calling user in a throwaway
    folder with rlimits and a timeout. It can read the user's files, use the network and leave
    processes behind."""

    def __init__(self, reason: str):
        self.reason = reason
        self.python = _base_python()

    def describe(self) -> str:
        return (f"exercises run UNSANDBOXED (allow_unsandboxed: true): they can read your files "
                f"and use the network; bubblewrap is unavailable: {self.reason}")

    def layers(self) -> list[str]:
        return ["UNSANDBOXED (allow_unsandboxed: true)", f"bubblewrap unavailable: {self.reason}",
                "rlimits: address space, cpu, file size, files, core", "timeout"]

    @contextlib.contextmanager
    def _launch(self, solution: str, tests: str, limits: Limits, verdict_fd: int
                ) -> Iterator[_Launch]:
        with tempfile.TemporaryDirectory(prefix="tbg-exercise-") as tmp:
            paths = (os.path.join(tmp, FILES[0]), os.path.join(tmp, FILES[1]))
            for path, code in zip(paths, (solution, tests), strict=True):
                Path(path).write_text(code, encoding="utf-8")
            env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8"}
            # no process limit: outside a user namespace it would count all of the user's
            argv = _harness_argv(self.python.executable, paths, verdict_fd, limits, 0)
            yield _Launch(argv, env, tmp, (verdict_fd,))


def sandbox_for(s: VerifySettings) -> Sandbox:
    """The sandbox exercises run in under these settings. Raises ``ConfigError`` where
    bubblewrap cannot run and the settings do not allow running exercises unsandboxed."""
    problem = bwrap_problem(s)
    if problem is None:
        bwrap = os.path.realpath(shutil.which(s.bwrap) or s.bwrap)
        return BwrapSandbox(bwrap, shutil.which("setpriv") if os.geteuid() == 0 else None)
    if s.allow_unsandboxed:
        return Unsandboxed(problem.splitlines()[-1] if problem else "")
    raise ConfigError(
        f"refusing to run model-written exercise code without a sandbox: {problem.strip()}\n"
        f"To fix: {INSTALL_HINT}; where it is installed but fails, see docs/sandbox.md "
        "(user namespaces may be disabled). Or set curation.verify_code: false to skip "
        "running exercises, or curation.verify.allow_unsandboxed: true to run them without "
        "isolation.")


def sandbox_layers(s: VerifySettings | None = None) -> list[str]:
    """What confined the exercises that ran under these settings, for the manifest; never
    raises. Without settings: bubblewrap on PATH where it works, else unsandboxed (where it
    does not work, an exercise can only have run that way)."""
    s = s or VerifySettings(allow_unsandboxed=True)
    try:
        return sandbox_for(s).layers()
    except ConfigError:
        return [f"none: no exercise may run ({(bwrap_problem(s) or '').strip()})"]


def run_python(tests: str, s: VerifySettings, solution: str = "") -> CheckResult:
    """Run ``solution`` (imported as a module), then ``tests`` (the main program, whose
    assertions are the evidence), in the sandbox the settings allow."""
    return sandbox_for(s).run(tests, Limits.of(s), solution)
