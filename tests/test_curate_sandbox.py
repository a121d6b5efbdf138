"""The exercise sandbox holds when the exercise tries to weaken it, and each layer holds alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from textbook_gen.curate.sandbox import landlock_abi, run_python, sandbox_layers
from textbook_gen.curate.settings import VerifySettings

S = VerifySettings(timeout_s=10, memory_mb=512)


def test_ordinary_standard_library_code_runs():
    code = """
import asyncio, logging, sqlite3, tempfile, unittest, pathlib, threading, zoneinfo, datetime
logging.getLogger("x").warning("logging works")
sqlite3.connect(":memory:").execute("create table t(x)")
with tempfile.NamedTemporaryFile("w") as f:
    f.write("x")
pathlib.Path("d").mkdir()
pathlib.Path("d/a.txt").write_text("hi")
assert pathlib.Path("d/a.txt").read_text() == "hi"
async def f():
    await asyncio.sleep(0)
    return 3
assert asyncio.run(f()) == 3
t = threading.Thread(target=lambda: None); t.start(); t.join()
datetime.datetime.now(zoneinfo.ZoneInfo("UTC"))
"""
    r = run_python(code, S)
    assert r.passed, r.detail


@pytest.mark.parametrize("attack", [
    # patch what a naive hook would call, then write outside
    "import os\nos.path.realpath = lambda p: os.getcwd()\nopen({target!r}, 'w').write('x')",
    "import builtins\nbuiltins.any = lambda *a: True\nbuiltins.isinstance = lambda *a: False\n"
    "open({target!r}, 'w').write('x')",
    "import os\nos.fsdecode = lambda p: 'inside'\nos.open({target!r}, os.O_CREAT | os.O_WRONLY)",
    # a descriptor of an outside folder, then a relative name beneath it
    "import os\nfd = os.open({folder!r}, os.O_RDONLY)\n"
    "os.close(os.open('escaped.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd))",
    # a symlink from inside to outside
    "import os\nos.symlink({folder!r}, 'link')\nopen('link/escaped.txt', 'w').write('x')",
    "import os\nos.chdir({folder!r})\nopen('escaped.txt', 'w').write('x')",
    "import subprocess\nsubprocess.run(['touch', {target!r}])",
    "import ctypes\nctypes.CDLL(None)",
])
def test_attempts_to_escape_fail(tmp_path, attack):
    target = tmp_path / "escaped.txt"
    r = run_python(attack.format(target=str(target), folder=str(tmp_path)), S)
    assert not r.passed
    assert "sandbox:" in r.detail or "Permission" in r.detail
    assert not target.exists()


def test_reading_outside_files_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    for code in (f"print(open({str(secret)!r}).read())", f"import os\nprint(os.listdir({str(tmp_path)!r}))"):
        r = run_python(code, S)
        assert not r.passed and "sandbox:" in r.detail
        assert "s3cret" not in r.detail and "['secret.txt']" not in r.detail


@pytest.mark.skipif(landlock_abi() == 0, reason="this kernel has no Landlock")
def test_landlock_alone_confines_writes_without_the_audit_hook(tmp_path):
    """Landlock is a kernel boundary: it holds even for code the audit hook never sees."""
    inside = tmp_path / "inside"
    inside.mkdir()
    outside = tmp_path / "outside.txt"
    code = (
        "import sys\nfrom textbook_gen.curate._sandbox_child import landlock\n"
        f"landlock({str(inside)!r}, [])\n"
        f"open({str(inside / 'ok.txt')!r}, 'w').write('ok')\n"
        f"try:\n    open({str(outside)!r}, 'w')\nexcept PermissionError:\n    sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3, proc.stderr
    assert (inside / "ok.txt").read_text() == "ok" and not outside.exists()
    assert any(layer.startswith("landlock") for layer in sandbox_layers())
