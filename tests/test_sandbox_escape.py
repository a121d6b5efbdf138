"""The escape corpus: hostile exercises, each written to pass only if its attack works, run in
the real sandbox; every invariant is then checked from outside it (files, servers, a victim
process, leftover processes, the runner's memory). Then the false passes: programs that end
early with status 0, or that forge the evidence of assertions, must be failures."""

from __future__ import annotations

import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest
from sandbox_helpers import Host, needs_bwrap, run_bounded, run_in_runner

from textbook_gen.curate.settings import VerifySettings

pytestmark = needs_bwrap

S = VerifySettings(timeout_s=5, memory_mb=256, disk_mb=8, max_processes=32)


@dataclass(frozen=True)
class Attack:
    name: str
    code: str  # formatted with Host.fields()
    must_fail: bool = True  # False: spawning is allowed; containment is checked outside
    because: str = ""  # what the failure must show: the limit that stopped it


SPAWN_SLEEPER = ("import subprocess\n"
                 "subprocess.Popen(['/usr/bin/sleep', {marker!r}], start_new_session=True)\n")

ATTACKS = [
    # files
    # the secret itself is never in the code: a traceback quoting the code would show it
    Attack("read a host file",
           "data = open({secret_file!r}).read()\nprint(data)\nassert data.startswith('s3cret-')"),
    Attack("list the user's home", "import os\nassert {home_entry!r} in os.listdir({home!r})"),
    Attack("read the project's site-packages", "assert open({venv_module!r}).read()"),
    Attack("list the interpreter's site-packages", "import os\nassert os.listdir({base_site!r})"),
    Attack("read a secret environment variable of any process", """
import os
blobs = []
for pid in [str({victim_pid}), str({parent_pid})] + os.listdir("/proc"):
    try:
        blobs.append(open(f"/proc/{{pid}}/environ", "rb").read())
    except OSError:
        pass
found = [b for b in blobs if b"TBG_TEST_SECRET=" in b]
print(found)
assert found
"""),
    Attack("write a host file",
           "open({outside_file!r}, 'w').write('x')\nimport os\nassert os.path.exists({outside_file!r})"),
    Attack("make /usr writable again", """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
MS_REMOUNT, MS_BIND = 32, 4096
libc.mount(None, b"/usr", None, MS_REMOUNT | MS_BIND, None)
open({usr_file!r}, "w").write("x")
"""),
    Attack("write a kernel setting", """
p = "/proc/sys/vm/swappiness"
value = open(p).read()
with open(p, "w") as f:  # the same value: harmless even where it got through
    f.write(value)
"""),
    Attack("open a nested user namespace", """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000) == 0, os.strerror(ctypes.get_errno())
"""),
    # network and local sockets
    Attack("connect to a unix socket by path",
           "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix_path!r})"),
    Attack("connect to an abstract unix socket",
           "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0' + {abstract_name!r})"),
    Attack("TCP to a loopback server",
           "import socket\nsocket.create_connection(('127.0.0.1', {tcp_port}), timeout=2)"),
    # resources
    Attack("write past the disk cap in one file", """
with open("/tmp/fill", "wb") as f:
    for _ in range({disk_mb} * 2):
        f.write(b"x" * 2**20)
"""),
    Attack("write past the disk cap in many files", """
for i in range({disk_mb} * 2):
    with open(f"/tmp/fill{{i}}", "wb") as f:
        f.write(b"x" * 2**20)
""", because="No space left on device"),
    Attack("write past the cap through /dev/shm", """
for i in range({disk_mb} * 2):
    with open(f"/dev/shm/fill{{i}}", "wb") as f:
        f.write(b"x" * 2**20)
""", because="No space left on device"),
    Attack("fork bomb", """
import os
born = 0
for _ in range(1000):
    if os.fork() == 0:
        os.execv("/usr/bin/sleep", ["sleep", {marker!r}])
    born += 1
assert born == 1000
""", because="BlockingIOError"),
    # processes and signals
    Attack("kill a host process", "import os\nos.kill({victim_pid}, 9)"),
    Attack("pidfd_send_signal to a host process",
           "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({victim_pid}), 9)"),
    Attack("daemon through fork_exec in a new session", SPAWN_SLEEPER, must_fail=False),
    Attack("double-fork daemon", """
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/usr/bin/sleep", ["sleep", {marker!r}])
    os._exit(0)
""", must_fail=False),
    Attack("grandchild holds stdout, the exercise fails at once", SPAWN_SLEEPER + "assert False"),
    Attack("grandchild holds stdout, the exercise hangs",
           SPAWN_SLEEPER + "import time\ntime.sleep(3600)"),
]


@pytest.fixture
def host(tmp_path, monkeypatch):
    h = Host(tmp_path, S)
    monkeypatch.setenv("TBG_TEST_SECRET", h.secret)  # the check's own environment too
    yield h
    h.close()


def _targets(host: Host) -> dict[str, object]:
    import textbook_gen

    venv_module = Path(textbook_gen.__file__)  # wherever the project is installed
    if "site-packages" not in str(venv_module):
        import pydantic

        venv_module = Path(pydantic.__file__)
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["purelib"]
    home = Path.home()
    interpreter = Path(sys.base_prefix).resolve()
    # a name in the home folder that is not on the way to the interpreter bound in
    entries = [p.name for p in home.iterdir() if not interpreter.is_relative_to(p.resolve())]
    return {**host.fields(), "venv_module": str(venv_module), "base_site": base,
            "home": str(home), "home_entry": entries[0] if entries else None}


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_contained(host, attack):
    fields = _targets(host)
    if "{home_entry" in attack.code and fields["home_entry"] is None:
        pytest.skip("the home folder is empty")
    if "{base_site" in attack.code and not Path(str(fields["base_site"])).is_dir():
        pytest.skip("the interpreter has no site-packages folder")
    r = run_bounded(attack.code.format(**fields), S)
    if attack.must_fail:
        assert not r.passed, f"the attack worked: {attack.name}"
    assert attack.because in r.detail
    host.assert_contained(r)


def test_a_host_file_is_readable_outside_the_sandbox(host):
    """The read attacks above fail because of the sandbox, not because the path is wrong."""
    fields = _targets(host)
    assert Path(str(fields["secret_file"])).read_text() == host.secret
    assert Path(str(fields["venv_module"])).read_text()


def test_killing_the_process_that_runs_the_check_fails():
    code = """
import os, signal
for kill in (lambda: os.kill(RUNNER_PID, 9),
             lambda: signal.pidfd_send_signal(os.pidfd_open(RUNNER_PID), 9),
             lambda: os.kill(os.getppid(), 9)):
    try:
        kill()
    except OSError:
        pass
import time
time.sleep(1)
assert False, "still here: nothing was killed"
"""
    out = run_in_runner(code, S)
    assert not out["passed"] and "nothing was killed" in out["detail"]


def test_a_gibibyte_of_output_leaves_the_parent_small():
    code = "import sys\nfor _ in range(1024):\n    sys.stdout.buffer.write(b'x' * 2**20)\n"
    out = run_in_runner(code, S.model_copy(update={"timeout_s": 120}))
    assert out["rss_growth_kb"] < 64 * 1024, out["rss_growth_kb"]
    assert len(out["detail"]) <= 4096


FALSE_PASSES = [
    ("SystemExit(0) before failing asserts", "raise SystemExit(0)\nassert add(1, 1) == 3"),
    ("SystemExit(0) after a passing assert", "assert add(1, 1) == 2\nraise SystemExit(0)\n"
                                             "assert add(1, 1) == 3"),
    ("sys.exit() in a test function", "import sys\ndef test_add():\n    sys.exit(0)\n"
                                      "    assert add(1, 1) == 3"),
    ("os._exit(0)", "import os\nos._exit(0)\nassert add(1, 1) == 3"),
    ("atexit os._exit(0)", "import atexit, os\natexit.register(os._exit, 0)\nassert add(1, 1) == 3"),
    ("sys.exit(main()) idiom", "import sys\ndef main():\n    return 0\n"
                               "if __name__ == '__main__':\n    sys.exit(main())\n"
                               "assert add(1, 1) == 3"),
    ("a fake verdict on every descriptor", "import os\nfor fd in range(3, 64):\n"
                                           "    try:\n        os.write(fd, b'0' * 32 + b' pass\\n')\n"
                                           "    except OSError:\n        pass\n"
                                           "print('passed')\nos._exit(0)"),
    ("closing the verdict pipe", "import os\nos.closerange(3, 64)\nassert add(1, 1) == 2"),
    ("a unittest case that fails, never run by the exercise",
     "import unittest\nclass T(unittest.TestCase):\n    def test_add(self):\n"
     "        self.assertEqual(add(1, 1), 3)\nif __name__ == '__main__':\n    unittest.main()"),
    ("a pytest-style test that fails, never called", "def test_add():\n    assert add(1, 1) == 3"),
    ("a wrong solution", "assert add(2, 2) == 5"),
    # forging the evidence: no marker, name or global the exercise can set counts
    ("a printed pass marker", "print('1 passed', flush=True)\nprint('nonce pass')"),
    ("a global assertion counter", "assertions = asserts_executed = __assertions__ = 99\n"
                                   "tests_ran = passed = True"),
    ("a builtin assertion counter", "import builtins\nbuiltins.assertions = 99\n"
                                    "builtins.__dict__['assert passed'] = 1"),
    ("a failing assert the tests catch", "try:\n    assert add(1, 1) == 3\n"
                                         "except AssertionError:\n    pass"),
    ("a failing unittest assertion the test catches",
     "import unittest\nclass T(unittest.TestCase):\n    def test_add(self):\n"
     "        try:\n            self.assertEqual(add(1, 1), 3)\n"
     "        except AssertionError:\n            pass"),
    ("AssertionError rebound to a harmless class",
     "class AssertionError(Exception):\n    pass\nassert add(1, 1) == 3"),
    ("a failing assert in a thread", "import threading\n"
                                     "def check():\n    assert add(1, 1) == 3\n"
                                     "t = threading.Thread(target=check)\nt.start()\nt.join()\n"
                                     "assert add(1, 1) == 2"),
]

TRUE_PASSES = [
    ("a correct solution", "assert add(2, 2) == 4"),
    ("a unittest case that passes", "import unittest\nclass T(unittest.TestCase):\n"
                                    "    def test_add(self):\n        self.assertEqual(add(1, 1), 2)\n"
                                    "if __name__ == '__main__':\n    unittest.main()"),
    ("an async pytest-style test", "async def test_add():\n    assert add(1, 1) == 2"),
]

SOLUTION = "def add(a, b):\n    return a + b\n"
MAIN_IDIOM = "import sys\ndef main():\n    raise RuntimeError('never run on import')\n" \
             "if __name__ == '__main__':\n    sys.exit(main())\n"


@pytest.mark.parametrize(("name", "tests"), FALSE_PASSES, ids=[n for n, _ in FALSE_PASSES])
def test_ending_early_failing_or_forging_is_never_a_pass(name, tests):
    assert not run_bounded(tests, S, solution=SOLUTION).passed


@pytest.mark.parametrize(("name", "tests"), TRUE_PASSES, ids=[n for n, _ in TRUE_PASSES])
def test_tests_that_run_to_the_end_pass(name, tests):
    r = run_bounded(tests, S, solution=SOLUTION)
    assert r.passed, r.detail


def test_a_solution_with_the_sys_exit_main_idiom_is_imported_not_run():
    r = run_bounded("assert add(2, 2) == 4", S, solution=SOLUTION + MAIN_IDIOM)
    assert r.passed, r.detail
