"""Crash safety and Ctrl-C, with real subprocesses: nothing stored is paid for twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import SMALL_SPEC, sent_messages, stored_messages, wait_for
from fakeapi import FakeAPI

from textbook_gen.shards import iter_records

MANY = SMALL_SPEC.replace(
    "[counting, {name: fractions, weight: 2}]", "[" + ", ".join(f"t{i}" for i in range(30)) + "]"
) + "engine: {concurrency: 6}\n"


def _start(spec, out, url, **kw):
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "TEXTBOOK_GEN_RETRY_BASE_DELAY": "0.01"}
    return subprocess.Popen(
        [sys.executable, "-m", "textbook_gen", "run", str(spec), "--out", str(out),
         "--base-url", f"{url}/v1", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw,
    )








def _texts(out):
    return sorted((r["id"], r["text"]) for r in iter_records(out))


def test_sigkill_then_resume_pays_only_for_requests_in_flight(write_spec, tmp_path):
    spec = write_spec(MANY)
    out = tmp_path / "crashed"
    with FakeAPI(latency=0.15) as server:
        proc = _start(spec, out, server.url)
        wait_for(lambda: server.count() >= 25)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        sent_before = server.count()
        stored = stored_messages(out)
        assert 0 < len(stored) < 60
        # a worker takes its next job only once its answer is durable: at most the 6 requests
        # in flight (concurrency 6) were paid without being stored
        assert sent_before - len(stored) <= 6

        proc = _start(spec, out, server.url)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        resent = [sent_messages(b) for b in server.generation_bodies()[sent_before:]]
        assert not set(resent) & stored  # nothing that was stored is sent again
        assert len(resent) == 60 - len(stored)

    with FakeAPI() as server:
        clean = tmp_path / "clean"
        proc = _start(spec, clean, server.url)
        assert proc.wait(timeout=120) == 0
    assert _texts(out) == _texts(clean)


def test_first_ctrl_c_finishes_in_flight_requests_and_says_how_to_resume(write_spec, tmp_path):
    spec = write_spec(MANY)
    out = tmp_path / "out"
    with FakeAPI(latency=0.6) as server:
        proc = _start(spec, out, server.url)
        wait_for(lambda: server.count() >= 8)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "run the same command again" in err.lower()
        assert "Traceback" not in err
        sent = server.count()
        assert sent < 60
        assert len(stored_messages(out)) == sent  # every request that went out has its answer stored

        proc = _start(spec, out, server.url)
        assert proc.wait(timeout=120) == 0
        assert server.count() == 60


def test_second_ctrl_c_stops_at_once(write_spec, tmp_path):
    spec = write_spec(MANY)
    out = tmp_path / "out"
    with FakeAPI(latency=30.0) as server:
        proc = _start(spec, out, server.url)
        wait_for(lambda: server.count() >= 6)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        # it did not wait for the answers in flight: none of them was stored
        assert len(stored_messages(out)) == 0


@pytest.mark.parametrize("window", [2.0])
def test_rate_limits_are_kept_and_mostly_used(write_spec, tmp_path, monkeypatch, window):
    import fakeapi

    from textbook_gen.run import Overrides, apply_overrides, run_curriculum
    from textbook_gen.spec import load_curriculum

    monkeypatch.setattr(fakeapi, "WINDOW", window)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    limit, n = 20, 60
    path = write_spec(MANY.replace("engine: {concurrency: 6}",
                                   f"engine: {{concurrency: 16, rpm: {limit}}}"))
    with FakeAPI(rpm=limit) as server:
        spec = apply_overrides(load_curriculum(path), Overrides(base_url=[f"{server.url}/v1"]))
        result = run_curriculum(spec, out_dir=tmp_path / "o", rate_window=window)
        rejected = sum(1 for r in server.requests if getattr(r, "rejected", False))
        accepted = sorted(server.accepted_times)
    assert result.records == n
    assert rejected == 0  # the server never had to say 429
    # never more than `limit` accepted in any window (how much of the limit is used is a
    # timing figure: bench/bench_engine.py measures it)
    assert all(sum(1 for t in accepted if a <= t < a + window) <= limit for a in accepted)
