"""The collapse watch: a planted opening or near-duplicates trip it, a varied stream does not;
in a real run it warns (and logs), and with --stop-on-collapse stops resumably."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from conftest import SMALL_SPEC
from fakeapi import FakeAPI
from test_measures import WORDS

from textbook_gen.spec import WatchSettings
from textbook_gen.watch import Watch


def _text(rng: random.Random, start: str | None = None) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(80))
    return f"{start or rng.choice(WORDS).capitalize()} {body}."


def _feed(watch: Watch, texts: list[str]) -> list:
    return [a for i, t in enumerate(texts) for a in watch.add("chapter", f"cell{i % 3}", t)]


def test_a_planted_opening_trips_the_watch_and_a_varied_stream_does_not():
    rng = random.Random(1)
    planted = [_text(rng, "Once upon a time" if i % 5 < 2 else None) for i in range(100)]
    alarms = _feed(Watch(WatchSettings()), planted)
    assert [a.problem for a in alarms] == ["opening"]  # raised once, not per answer
    assert alarms[0].detail == "once upon a" and alarms[0].share > 0.3
    assert alarms[0].cells == ("cell0", "cell1", "cell2")
    rng = random.Random(1)
    assert _feed(Watch(WatchSettings()), [_text(rng) for _ in range(100)]) == []


def test_near_duplicates_trip_the_watch():
    rng = random.Random(2)
    base = _text(rng)
    texts = [_text(rng) for _ in range(40)] + [base.replace("river", "lake", 1) for _ in range(6)]
    alarms = _feed(Watch(WatchSettings(max_opening_share=1.0)), texts)
    assert [a.problem for a in alarms] == ["near_duplicates"]


RUN_SPEC = SMALL_SPEC.replace(
    "[counting, {name: fractions, weight: 2}]", "[" + ", ".join(f"t{i}" for i in range(40)) + "]"
) + "engine: {concurrency: 2}\nwatch: {min_answers: 10, window: 40}\n"


def _collapsing_server(after: int) -> FakeAPI:
    rng = random.Random(3)
    seen = [0]

    def responder(body):
        seen[0] += 1
        start = "It is important to note that" if seen[0] > after else None
        return "## A section\n\n" + _text(rng, start)

    return FakeAPI(responder=responder)


def _run(spec, out, url, *extra):
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    return subprocess.run([sys.executable, "-m", "textbook_gen", "run", str(spec), "--out",
                           str(out), "--base-url", f"{url}/v1", "--quiet", *extra],
                          capture_output=True, text=True, env=env, timeout=180)


def test_a_real_run_warns_and_logs_when_answers_start_to_repeat(write_spec, tmp_path):
    spec = write_spec(RUN_SPEC)
    with _collapsing_server(after=20) as server:
        proc = _run(spec, tmp_path / "o", server.url)
        assert server.count() == 80
    assert proc.returncode == 0, proc.stderr
    assert "collapse watch" in proc.stderr and "'it is important'" in proc.stderr
    assert "collapse watch" in (tmp_path / "o" / "run.log").read_text()


def test_stop_on_collapse_stops_the_run_resumably(write_spec, tmp_path):
    spec = write_spec(RUN_SPEC)
    with _collapsing_server(after=20) as server:
        proc = _run(spec, tmp_path / "o", server.url, "--stop-on-collapse")
        stopped_at = server.count()
        assert proc.returncode == 6, proc.stderr
        assert "Stopped (--stop-on-collapse)" in proc.stderr and "Traceback" not in proc.stderr
        assert stopped_at < 80
        again = _run(spec, tmp_path / "o", server.url)  # resumes, sends only the rest
        assert again.returncode == 0, again.stderr
        assert server.count() == 80
