"""What the sandbox tests share: a host with things worth attacking (a secret file, servers, a
victim process), checked from outside after each exercise, and a runner process for attacks
on the process that runs the check."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from textbook_gen.curate.sandbox import CheckResult, bwrap_problem, run_python
from textbook_gen.curate.settings import VerifySettings

_problem = bwrap_problem(VerifySettings())
# CI installs bubblewrap (.ci/run): there a missing sandbox fails the tests instead of skipping them
needs_bwrap = pytest.mark.skipif(_problem is not None and not os.environ.get("CI"),
                                 reason=f"bubblewrap cannot run here: {_problem}")

RUNNER = r"""
import json, os, resource, sys
from textbook_gen.curate.sandbox import run_python
from textbook_gen.curate.settings import VerifySettings
settings = VerifySettings.model_validate_json(sys.argv[1])
code = sys.stdin.read().replace("RUNNER_PID", str(os.getpid()))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = run_python(code, settings)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"passed": r.passed, "detail": r.detail, "rss_growth_kb": after - before}))
"""


def run_in_runner(code: str, settings: VerifySettings, wait_s: float = 300) -> dict:
    """Check ``code`` from a separate Python process (``RUNNER_PID`` in the code becomes its
    pid); returns its verdict and how much its peak memory grew. Fails if the runner died."""
    proc = subprocess.run([sys.executable, "-c", RUNNER, settings.model_dump_json()],
                          input=code, capture_output=True, text=True, timeout=wait_s)
    assert proc.returncode == 0, f"the runner died ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def run_bounded(code: str, settings: VerifySettings, solution: str = "") -> CheckResult:
    """``run_python`` that must come back: a check still running a minute past its own limit
    is a hang (e.g. waiting on a pipe a leftover process holds), not a slow machine."""
    out: list[CheckResult] = []
    worker = threading.Thread(target=lambda: out.append(run_python(code, settings, solution)),
                              daemon=True)
    worker.start()
    worker.join(settings.timeout_s + 60)
    assert not worker.is_alive(), "the check did not return"
    return out[0]


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line holds ``marker`` (seen from outside any sandbox)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
    return found


class _Server:
    """Accepts connections on a thread and remembers whether anyone got through."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.connected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connected += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@dataclass
class Host:
    """Targets on this machine, and the check that none of them was reached."""

    tmp: Path
    settings: VerifySettings
    secret: str = field(default_factory=lambda: "s3cret-" + secrets.token_hex(8))
    # a number, so that `sleep MARKER` carries it in a command line
    marker: str = field(default_factory=lambda: f"7{secrets.randbelow(10**9):09d}")
    servers: list[_Server] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.secret_file = self.tmp / "secret.txt"
        self.secret_file.write_text(self.secret)
        self.outside_file = self.tmp / "escaped.txt"
        self.usr_file = Path(f"/usr/tbg-escape-{self.marker}")
        unix = socket.socket(socket.AF_UNIX)
        self.unix_path = str(self.tmp / "s.sock")
        unix.bind(self.unix_path)
        abstract = socket.socket(socket.AF_UNIX)
        self.abstract_name = f"tbg-test-{self.marker}"
        abstract.bind("\0" + self.abstract_name)
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        self.tcp_port = tcp.getsockname()[1]
        self.servers = [_Server(s) for s in (unix, abstract, tcp)]
        # a process holding a secret in its environment, as the parent's API keys would be
        self.victim = subprocess.Popen(["sleep", "600"],
                                       env={**os.environ, "TBG_TEST_SECRET": self.secret})

    def fields(self) -> dict[str, object]:
        return {"secret": self.secret, "secret_file": str(self.secret_file),
                "outside_file": str(self.outside_file), "usr_file": str(self.usr_file),
                "unix_path": self.unix_path, "abstract_name": self.abstract_name,
                "tcp_port": self.tcp_port, "marker": self.marker, "victim_pid": self.victim.pid,
                "parent_pid": os.getpid(), "disk_mb": self.settings.disk_mb}

    def assert_contained(self, result: CheckResult) -> None:
        assert self.secret not in result.detail
        assert not self.outside_file.exists()
        assert not self.usr_file.exists()
        assert [s.connected for s in self.servers] == [0, 0, 0], "a server was reached"
        assert self.victim.poll() is None, "the victim process was killed"
        leftovers = processes_with(self.marker)
        for _ in range(20):  # the kernel may still be reaping a killed namespace
            if not leftovers:
                break
            time.sleep(0.1)
            leftovers = processes_with(self.marker)
        assert leftovers == [], "processes of the exercise outlived the check"

    def close(self) -> None:
        for s in self.servers:
            s.close()
        self.victim.kill()
        self.victim.wait()
        for pid in processes_with(self.marker):  # only after a failed test
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        self.usr_file.unlink(missing_ok=True)
