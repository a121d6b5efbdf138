"""The exercise sandbox runs ordinary code, never runs it as root, and fails closed: without a
working bubblewrap it refuses unless the settings allow running exercises unsandboxed. The
attacks it holds against are in test_sandbox_escape.py."""

from __future__ import annotations

import contextlib
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
from sandbox_helpers import needs_bwrap, processes_with

from textbook_gen.curate.sandbox import run_python, sandbox_for, sandbox_layers
from textbook_gen.curate.settings import VerifySettings
from textbook_gen.curate.verify import verify_records
from textbook_gen.errors import ConfigError

S = VerifySettings(timeout_s=10, memory_mb=512)


@needs_bwrap
def test_ordinary_standard_library_code_runs():
    code = """
import asyncio, logging, multiprocessing, sqlite3, subprocess, tempfile, unittest, pathlib
import threading, zoneinfo, datetime, os
logging.getLogger("x").warning("logging works")
sqlite3.connect(":memory:").execute("create table t(x)")
with tempfile.NamedTemporaryFile("w") as f:
    f.write("x")
pathlib.Path("d").mkdir()
pathlib.Path("d/a.txt").write_text("hi")
assert pathlib.Path("d/a.txt").read_text() == "hi"
assert pathlib.Path(os.path.expanduser("~/d/a.txt")).read_text() == "hi"
async def f():
    await asyncio.sleep(0)
    return 3
assert asyncio.run(f()) == 3
t = threading.Thread(target=lambda: None); t.start(); t.join()
with multiprocessing.Lock():
    pass
assert subprocess.run(["echo", "hi"], capture_output=True, text=True).stdout == "hi\\n"
datetime.datetime.now(zoneinfo.ZoneInfo("Europe/Paris"))
"""
    r = run_python(code, S)
    assert r.passed, r.detail


@needs_bwrap
def test_exercise_processes_never_run_as_root_on_the_host():
    marker = f"7{time.time_ns() % 10**9:09d}"
    code = (f"import subprocess, time\nsubprocess.Popen(['/usr/bin/sleep', {marker!r}])\n"
            "time.sleep(3)\n")
    done = threading.Event()
    threading.Thread(target=lambda: (run_python(code, S), done.set()), daemon=True).start()
    uids = []
    while not done.is_set() and not uids:
        for pid in processes_with(marker):
            with contextlib.suppress(OSError):  # it may have ended meanwhile
                status = Path(f"/proc/{pid}/status").read_text()
                uids = [int(x) for x in status.split("Uid:")[1].splitlines()[0].split()]
        time.sleep(0.05)
    done.wait(60)
    assert uids and 0 not in uids


def _no_bwrap_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_without_bwrap_exercises_are_refused_with_the_install_command(monkeypatch, tmp_path):
    _no_bwrap_on_path(monkeypatch, tmp_path)
    with pytest.raises(ConfigError) as e:
        sandbox_for(VerifySettings())
    assert "apt-get install bubblewrap" in str(e.value)
    assert "not found on PATH" in str(e.value)


def test_verification_refuses_before_running_any_exercise(monkeypatch, tmp_path):
    _no_bwrap_on_path(monkeypatch, tmp_path)
    ran = tmp_path / "ran.txt"
    doc = (f"## Exercise 1\nWrite.\n\n### Solution\n```python\nopen({str(ran)!r}, 'w')\n```\n\n"
           "### Tests\n```python\nassert True\n```\n")
    with pytest.raises(ConfigError):
        verify_records([{"text": doc}], VerifySettings())
    assert not ran.exists()
    # the same document does run where running unsandboxed is allowed: the refusal was real
    verify_records([{"text": doc}], VerifySettings(allow_unsandboxed=True))
    assert ran.exists()


def test_a_missing_bwrap_path_is_named_in_the_refusal(tmp_path):
    missing = str(tmp_path / "no" / "bwrap")
    with pytest.raises(ConfigError) as e:
        sandbox_for(VerifySettings(bwrap=missing))
    assert missing in str(e.value)


def test_a_bwrap_that_cannot_make_namespaces_is_refused_in_its_own_words(tmp_path):
    """As on Ubuntu 24.04, where AppArmor keeps unprivileged user namespaces from bwrap."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(ConfigError) as e:
        sandbox_for(VerifySettings(bwrap=str(fake)))
    assert "setting up uid map: Permission denied" in str(e.value)


def test_allow_unsandboxed_runs_exercises_unconfined_and_says_so(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("visible")
    missing = str(tmp_path / "bwrap")
    s = VerifySettings(bwrap=missing, allow_unsandboxed=True)
    sandbox = sandbox_for(s)
    assert not sandbox.strong
    assert "unsandboxed" in sandbox.describe().lower() and missing in sandbox.describe()
    assert any(missing in layer for layer in sandbox.layers())
    r = run_python(f"assert open({str(secret)!r}).read() == 'visible'", s)
    assert r.passed, r.detail  # what "unsandboxed" means: host files are readable


@needs_bwrap
def test_allow_unsandboxed_changes_nothing_where_bwrap_works(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hidden")
    s = VerifySettings(allow_unsandboxed=True)
    assert sandbox_for(s).strong
    assert not run_python(f"open({str(secret)!r}).read()", s).passed


@needs_bwrap
def test_the_exercise_writes_in_its_own_empty_folder_not_the_hosts_tmp():
    name = f"tbg-{time.time_ns()}"
    code = (f"import os\nassert os.getcwd() == os.path.expanduser('~') == '/tmp'\n"
            f"assert os.listdir() == []\nopen({name!r}, 'w').write('x')\n"
            f"assert os.listdir() == [{name!r}]\n")
    r = run_python(code, S)
    assert r.passed, r.detail
    assert not Path("/tmp", name).exists()


@needs_bwrap
def test_a_bwrap_too_old_for_the_size_cap_is_refused_with_its_version(tmp_path):
    real = shutil.which("bwrap")
    fake = tmp_path / "bwrap"
    fake.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "bubblewrap 0.6.1" && exit 0\n'
                    f'exec {real} "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(ConfigError) as e:
        sandbox_for(VerifySettings(bwrap=str(fake)))
    assert "bubblewrap 0.6.1 is too old" in str(e.value)


@needs_bwrap
def test_the_manifest_layers_name_the_bubblewrap_that_ran():
    import subprocess

    version = subprocess.run([shutil.which("bwrap") or "bwrap", "--version"], capture_output=True,
                             text=True).stdout.strip()
    assert sandbox_layers(S)[0] == version


def test_the_manifest_layers_say_why_exercises_ran_unsandboxed(monkeypatch, tmp_path):
    _no_bwrap_on_path(monkeypatch, tmp_path)
    layers = sandbox_layers(VerifySettings(allow_unsandboxed=True))
    assert any("not found on PATH" in layer for layer in layers)
    assert sandbox_layers(VerifySettings()) != layers  # refused: nothing ran unsandboxed


PID1_SCRIPT = r"""
import json, os
from textbook_gen.curate.settings import VerifySettings
from textbook_gen.curate.verify import verify_records

def exercise(tests):
    return ("## Exercise 1\nAdd.\n\n### Solution\n```python\ndef add(a, b):\n    return a + b\n"
            "```\n\n### Tests\n```python\n" + tests + "\n```\n")

docs = [{"text": exercise(t)} for t in
        ("assert add(1, 2) == 3", "assert add(1, 2) == 4", "print(add(1, 2))")]
verdicts = verify_records(docs, VerifySettings(timeout_s=30, workers=2))
zombies = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        stat = open(f"/proc/{entry}/stat").read()
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if state == "Z" and int(ppid) == os.getpid():
            zombies.append(stat[stat.index("(") + 1:stat.rindex(")")])
print(json.dumps({"pid": os.getpid(), "keep": [v.keep for v in verdicts], "zombies": zombies}))
"""


@needs_bwrap
def test_as_pid_1_verification_leaves_no_zombie_children():
    """In a container without an init, textbook-gen is PID 1 and adopts every orphan: bwrap's
    namespace init, which bwrap's monitor never waits for, must be reaped by us."""
    import json
    import os
    import subprocess
    import sys

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    # as root a PID namespace needs nothing more; otherwise a user namespace that maps us
    # to ourselves (not to root, which would take the sandbox's root path)
    user = [] if os.geteuid() == 0 else ["--map-current-user"]
    proc = subprocess.run([unshare, *user, "--pid", "--fork", "--mount-proc", sys.executable,
                           "-c", PID1_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["pid"] == 1
    assert out["zombies"] == []
    assert out["keep"] == [True, False, False]
