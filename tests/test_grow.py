"""``textbook-gen grow`` against the loopback server: a topics file the spec includes, a rerun
that sends nothing, a malformed answer that writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from fakeapi import FakeAPI

from textbook_gen.expand import count_jobs
from textbook_gen.grow import Grown, merge, parse_topics
from textbook_gen.spec import load_curriculum

SPEC = """\
name: linalg
description: A first course in linear algebra.
model: {provider: openai, name: gpt-4o-mini, max_tokens: 300}
audiences: [undergraduates]
subjects:
  - name: Linear algebra
    include: linear-algebra.topics.yaml
  - name: Calculus
    topics: [limits]
documents:
  - {kind: chapter, template: chapter.md.j2, per: [topic]}
"""

LIST = """Here is the plan.
- Vectors: magnitude, direction, components
- Vector: magnitude again
- **Matrices**: rows, columns, entries
1. Linear maps: kernels, images
- Eigenvalues and eigenvectors: characteristic polynomial, diagonalisation
"""


def responder(body):
    prompt = body["messages"][-1]["content"]
    if "subtopics" in prompt:
        parent = prompt.split('"')[1]
        return "\n".join(f"- {parent} part {i}: idea {i}" for i in range(4))
    return LIST


def _grow(spec, url, *args):
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    return subprocess.run([sys.executable, "-m", "textbook_gen", "grow", str(spec), "--base-url",
                           f"{url}/v1", "--quiet", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_grow_writes_an_includable_file_and_a_rerun_sends_nothing(write_spec, tmp_path):
    path = write_spec(SPEC)
    with FakeAPI(responder=responder) as server:
        proc = _grow(path, server.url, "--out", tmp_path / "o")
        assert proc.returncode == 0, proc.stderr
        sent = server.count()
        assert sent == 1
        grown = tmp_path / "linear-algebra.topics.yaml"
        text = grown.read_text()
        assert text.startswith("# Topics of 'Linear algebra', grown by `textbook-gen grow`")
        assert "openai/gpt-4o-mini" in text and "prompts sha256" in text
        spec = load_curriculum(path)  # the spec now loads, with the grown topics
        names = [t.name for t in spec.subjects[0].topics]
        assert names == ["Vectors", "Matrices", "Linear maps", "Eigenvalues and eigenvectors"]
        assert spec.subjects[0].topics[0].notes == "magnitude, direction, components"
        assert count_jobs(spec) == 5
        refused = _grow(path, server.url, "--out", tmp_path / "o")
        assert refused.returncode == 2 and "--force" in refused.stderr  # edits are not lost
        again = _grow(path, server.url, "--out", tmp_path / "o", "--subject", "Linear algebra",
                      "--force")
        assert again.returncode == 0, again.stderr
        assert server.count() == sent  # answered from the run store
        assert grown.read_text().split("\n", 3)[3] == text.split("\n", 3)[3]


def test_grow_to_depth_two_asks_for_subtopics_of_each_topic(write_spec, tmp_path):
    path = write_spec(SPEC)
    with FakeAPI(responder=responder) as server:
        proc = _grow(path, server.url, "--out", tmp_path / "o", "--depth", "2")
        assert proc.returncode == 0, proc.stderr
        assert server.count() == 1 + 4
    topics = load_curriculum(path).subjects[0].topics
    assert len(topics) == 16 and topics[0].name == "Vectors: Vectors part 0"


def test_a_malformed_answer_is_a_clear_error_and_nothing_is_written(write_spec, tmp_path):
    path = write_spec(SPEC)
    with FakeAPI(responder=lambda body: "I would be happy to help with linear algebra!") as server:
        proc = _grow(path, server.url, "--out", tmp_path / "o")
    assert proc.returncode == 2, proc.stderr
    assert "not a list of '- name: key concepts' lines" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "linear-algebra.topics.yaml").exists()


def test_plan_and_run_before_grow_say_what_to_do(write_spec, tmp_path):
    path = write_spec(SPEC)
    env = {**os.environ, "COLUMNS": "250", "OPENAI_API_KEY": "sk-test"}
    plan = subprocess.run([sys.executable, "-m", "textbook_gen", "plan", str(path), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert "grow first" in plan.stdout and "Linear algebra" in plan.stdout
    run = subprocess.run([sys.executable, "-m", "textbook_gen", "run", str(path), "--out",
                          str(tmp_path / "o"), "--quiet"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert run.returncode == 2 and "textbook-gen grow writes it" in run.stderr


def test_parse_and_merge():
    assert parse_topics(LIST)[:2] == [("Vectors", "magnitude, direction, components"),
                                     ("Vector", "magnitude again")]
    merged = merge([Grown(n, k) for n, k in parse_topics(LIST)])
    assert [g.name for g in merged] == ["Vectors", "Matrices", "Linear maps",
                                        "Eigenvalues and eigenvectors"]
    assert merge([Grown("Sets", ""), Grown("sets.", ""), Grown("Set theory", ""),
                  Grown("Eigenvectors and the eigenvalues", ""), Grown("Eigenvalues", ""),
                  Grown("eigenvalues & eigenvectors", "")]) == [
        Grown("Sets", ""), Grown("Set theory", ""), Grown("Eigenvectors and the eigenvalues", ""),
        Grown("Eigenvalues", "")]
