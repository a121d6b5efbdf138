"""`run --ray`: generation on a real Ray cluster, store partitions, kills and resume."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import SMALL_SPEC, sent_messages, stored_messages, wait_for
from fakeapi import FakeAPI

from textbook_gen.shards import iter_records

pytest.importorskip("ray", reason="Ray is not installed (pip install 'textbook-gen[ray]')")
# hang guards, not timings: a Ray cluster's workers start slowly on a loaded 2-core machine
pytestmark = pytest.mark.timeout(1200)
WAIT = 600

MANY = SMALL_SPEC.replace(
    "[counting, {name: fractions, weight: 2}]", "[" + ", ".join(f"t{i}" for i in range(30)) + "]"
) + "engine: {concurrency: 6}\n"
JOBS = 60  # 30 topics x 2 audiences


def _env() -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": "sk-test", "TEXTBOOK_GEN_RETRY_BASE_DELAY": "0.01"}


def _start(spec: Path, out: Path, url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "textbook_gen", "run", str(spec), "--out", str(out),
         "--base-url", f"{url}/v1", "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _texts(out: Path) -> list[tuple[str, str]]:
    return sorted((r["id"], r["text"]) for r in iter_records(out))








def _pids(marker: str) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    found.append(int(d))
    return found


@pytest.fixture
def cluster():
    """A Ray cluster started with `ray start --head`, two CPUs; afterwards its processes (and
    only they: those naming its session directory, and their workers) are stopped."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_bin = Path(sys.executable).with_name("ray")
    subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=_env())
    session = os.path.basename(os.readlink("/tmp/ray/session_latest"))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for pid in _pids(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _pids("ray::_Worker"), timeout=WAIT)
        current = Path("/tmp/ray/ray_current_cluster")  # ray start's note for `auto`: ours
        with contextlib.suppress(OSError):
            if current.read_text().strip().endswith(f":{port}"):
                current.unlink()


def test_ray_run_ends_with_the_same_records_as_one_process(write_spec, tmp_path, cluster):
    spec = write_spec(MANY)
    with FakeAPI(latency=0.01) as server:
        one = _start(spec, tmp_path / "one", server.url)
        assert one.wait(timeout=WAIT) == 0, one.stderr.read()
        sent_one = server.count()
        ray = _start(spec, tmp_path / "ray", server.url, "--ray", cluster, "--workers", "2")
        assert ray.wait(timeout=WAIT) == 0, ray.stderr.read()
        assert server.count() - sent_one == JOBS  # every job sent once, none twice
    assert _texts(tmp_path / "ray") == _texts(tmp_path / "one")
    assert not list((tmp_path / "ray").glob("run-part-*"))  # taken into run.sqlite
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["counts"]["records"] == JOBS
    by_worker = manifest["this_run"]["ray"]["answers_by_worker"]
    assert len(by_worker) == 2 and min(by_worker) > 0 and sum(by_worker) == JOBS


def test_killed_ray_worker_loses_no_answer_and_the_rerun_resumes(write_spec, tmp_path, cluster):
    spec = write_spec(MANY)
    out = tmp_path / "run"
    with FakeAPI(latency=0.15) as server:
        proc = _start(spec, out, server.url, "--ray", cluster, "--workers", "2")
        wait_for(lambda: server.count() >= 15)
        victims = _pids("ray::_Worker")
        assert victims, "no Ray worker process found"
        os.kill(victims[0], signal.SIGKILL)
        assert proc.wait(timeout=WAIT) != 0
        err = proc.stderr.read()
        assert "a Ray worker died" in err and "Traceback" not in err
        sent_before = server.count()
        stored = stored_messages(out)
        # concurrency 6 split over 2 workers: at most 3 paid answers were in flight in the
        # killed worker; everything else that was paid is stored
        assert len(stored) >= sent_before - 3
        assert not list(out.glob("run-part-*.sqlite"))
        proc = _start(spec, out, server.url, "--ray", cluster, "--workers", "2")
        assert proc.wait(timeout=WAIT) == 0, proc.stderr.read()
        resent = [sent_messages(b) for b in server.generation_bodies()[sent_before:]]
        assert not set(resent) & stored  # nothing stored is sent again
        assert len(_texts(out)) == JOBS


def test_killed_driver_leaves_partitions_that_plan_and_the_rerun_take_in(write_spec, tmp_path,
                                                                        cluster):
    spec = write_spec(MANY)
    out = tmp_path / "run"
    with FakeAPI(latency=0.15) as server:
        proc = _start(spec, out, server.url, "--ray", cluster, "--workers", "2")
        wait_for(lambda: server.count() >= 15)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT)
        wait_for(lambda: not _pids("ray::_Worker"))  # the cluster ends a dead driver's actors
        sent_before = server.count()
        assert list(out.glob("run-part-*.sqlite"))  # the workers' answers, not yet taken in
        plan = subprocess.run([sys.executable, "-m", "textbook_gen", "plan", str(spec), "--out",
                               str(out)], capture_output=True, text=True, env=_env())
        assert plan.returncode == 0, plan.stderr
        assert not list(out.glob("run-part-*.sqlite"))  # plan took them in
        stored = stored_messages(out)
        assert len(stored) >= sent_before - 6
        proc = _start(spec, out, server.url, "--ray", cluster, "--workers", "2")
        assert proc.wait(timeout=WAIT) == 0, proc.stderr.read()
        resent = [sent_messages(b) for b in server.generation_bodies()[sent_before:]]
        assert not set(resent) & stored
        assert len(_texts(out)) == JOBS


def test_budget_holds_across_ray_workers(write_spec, tmp_path, cluster):
    spec = write_spec(MANY)
    out = tmp_path / "run"
    with FakeAPI(latency=0.01) as server:
        proc = _start(spec, out, server.url, "--ray", cluster, "--workers", "2",
                      "--max-cost", "0.002")
        assert proc.wait(timeout=WAIT) == 4, proc.stderr.read()
        assert 0 < server.count() < JOBS
    manifest = json.loads((out / "manifest.json").read_text())
    assert 0 < manifest["this_run"]["spent_usd"] <= 0.002
    assert manifest["usage"]["cost_usd"] <= 0.002  # every answer stored, from every worker


def test_ray_with_batch_is_one_message(write_spec, tmp_path):
    spec = write_spec(MANY)
    p = subprocess.run([sys.executable, "-m", "textbook_gen", "run", str(spec), "--out",
                        str(tmp_path / "o"), "--ray", "local", "--batch"], capture_output=True,
                       text=True, env=_env())
    assert p.returncode == 2 and "--ray with --batch" in p.stderr and "Traceback" not in p.stderr


def _cell_of(body: dict) -> tuple[str, str]:
    """(topic, audience) of a chapter request, read from its prompt."""
    m = re.search(r"Topic of this section: (\S+)\nReaders: (\S+)", json.dumps(body["messages"])
                  .replace("\\n", "\n"))
    assert m, body
    return m[1], m[2]


def test_ray_run_passes_on_the_collapse_watch_and_stops_every_worker_on_it(write_spec, tmp_path,
                                                                           cluster):
    """Each worker watches its own answers; its alarm reaches the terminal and run.log as in
    one process, and under --stop-on-collapse it stops the other workers too."""
    from test_watch import RUN_SPEC, _text

    from textbook_gen.distributed_run import partition_of
    from textbook_gen.expand import jobs
    from textbook_gen.prompts import PromptRenderer
    from textbook_gen.spec import load_curriculum

    spec = write_spec(RUN_SPEC)  # 80 jobs, concurrency 2 (one a worker), window 40, 10 answers
    curriculum = load_curriculum(spec)
    render = PromptRenderer(curriculum).render
    worker = {(j.topic, j.audience): partition_of(render(j).key, 2) for j in jobs(curriculum)}
    assert sorted(set(worker.values())) == [0, 1]
    on_one = sum(worker.values())
    rng = random.Random(4)
    released = threading.Event()

    def responder(body):  # worker 0's answers collapse; worker 1's do not
        start = "It is important to note that" if worker[_cell_of(body)] == 0 else None
        return "## A section\n\n" + _text(rng, start)

    def hold(body):  # worker 1's first request waits until the alarm was logged
        return worker[_cell_of(body)] == 1 and not released.is_set()

    out = tmp_path / "run"
    with FakeAPI(responder=responder, hold=hold) as server:
        proc = _start(spec, out, server.url, "--ray", cluster, "--workers", "2",
                      "--stop-on-collapse")
        wait_for(lambda: "collapse watch" in _read(out / "run.log"), timeout=WAIT)
        released.set()
        _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 6, err
        assert "Stopped (--stop-on-collapse)" in err and "'it is important'" in err
        assert "Traceback" not in err
        sent_by_one = sum(worker[_cell_of(b)] for b in server.generation_bodies())
        assert sent_by_one < on_one  # worker 1 never tripped: the driver stopped it
        again = _start(spec, out, server.url, "--ray", cluster, "--workers", "2")
        _, err = again.communicate(timeout=WAIT)
        assert again.returncode == 0, err  # without --stop-on-collapse it warns and goes on
        assert "collapse watch" in err
        assert server.count() == 80  # the rerun sent only what the stop left unsent


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_more_workers_than_concurrency_run_as_many_as_it_allows_and_say_so(write_spec,
                                                                             tmp_path, cluster):
    spec = write_spec(MANY.replace("engine: {concurrency: 6}", "engine: {concurrency: 2}"))
    with FakeAPI() as server:
        proc = subprocess.run(
            [sys.executable, "-m", "textbook_gen", "run", str(spec), "--out", str(tmp_path / "o"),
             "--base-url", f"{server.url}/v1", "--ray", cluster, "--workers", "3"],
            capture_output=True, text=True, env=_env(), timeout=WAIT)
        assert proc.returncode == 0, proc.stderr
        assert server.max_in_flight <= 2  # the workers' shares of concurrency sum to it
    assert "2 workers, not 3: engine.concurrency is 2" in proc.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["this_run"]["ray"]["workers"] == 2
    assert sum(manifest["this_run"]["ray"]["answers_by_worker"]) == JOBS
