"""report.html: written offline, opened in a real headless Chromium (the system package): no
console errors, no network request made, the charts drawn, and a screenshot to look at."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_SPEC
from fakeapi import FakeAPI

from textbook_gen.run import Overrides, apply_overrides, run_curriculum
from textbook_gen.spec import load_curriculum

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium; .ci/run does)")


def _open(page: Path, work: Path) -> tuple[str, list[str], list[str]]:
    """(rendered DOM, console lines, URLs the page itself requested) of ``page``."""
    net = work / "net.json"
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={work / 'profile'}", "--window-size=1300,4000",
         f"--screenshot={work / 'report.png'}", "--enable-logging=stderr", "--v=0",
         f"--log-net-log={net}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    log = json.loads(net.read_text())
    # requests the browser makes for itself carry no origin; the page's carry its own
    requested = [e["params"]["url"] for e in log["events"]
                 if "url" in e.get("params", {}) and "initiator" in e["params"]
                 and e["params"]["initiator"] != "not an origin"]
    return proc.stdout, console, requested


@needs_chromium
def test_the_checks_see_console_errors_and_network_requests(tmp_path):
    control = tmp_path / "control.html"
    control.write_text("<html><body><script>undefinedFunction();</script>"
                       "<img src='http://127.0.0.1:9/x.png'></body></html>")
    _, console, requested = _open(control, tmp_path)
    assert any("undefinedFunction" in ln for ln in console)
    assert requested == ["http://127.0.0.1:9/x.png"]


def _judged_run(tmp_path: Path, write_spec) -> Path:
    def responder(body):
        prompt = body["messages"][-1]["content"]
        return "Clear. Educational score: 4" if "Educational score" in prompt else None

    path = write_spec(SMALL_SPEC.replace("curation:\n  enabled: false",
                                         "curation:\n  min_tokens: 20\n  judge: {enabled: true}"))
    with FakeAPI(responder=responder) as server:
        server.script("truncate")  # one reject, for the rejections section
        spec = apply_overrides(load_curriculum(path), Overrides(base_url=[f"{server.url}/v1"]))
        os.environ.setdefault("OPENAI_API_KEY", "sk-test")
        run_curriculum(spec, out_dir=tmp_path / "o")
    return tmp_path / "o"


@needs_chromium
def test_report_opens_offline_with_its_charts(tmp_path, write_spec, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    run = _judged_run(tmp_path, write_spec)
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "report", str(run)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    page = run / "report.html"
    html = page.read_text()
    markup = re.sub(r"<script.*?</script>", "", html, flags=re.S)  # plotly.js quotes URLs
    assert "<script src" not in html and not re.search(r"""(src|href)\s*=\s*["']https?://""",
                                                           markup)  # nothing to fetch
    dom, console, requested = _open(page, tmp_path)
    assert console == [] and requested == []
    for element in ("id=\"coverage\"", "chart-tokens", "chart-judge", "chart-reasons",
                    "chart-spend", "id=\"provenance\""):
        assert element in dom, element
    assert dom.count("class=\"main-svg\"") >= 5  # plotly drew the charts in the browser
    shot = tmp_path / "report.png"
    assert shot.stat().st_size > 50_000
    print(f"screenshot: {shot}")
