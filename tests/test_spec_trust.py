"""A spec is trusted like code, but its templates cannot run code, and what it reaches beyond
its folder (files, an API key sent to another server) is said before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import SMALL_SPEC

ESCAPES = [
    "{{ cycler.__init__.__globals__.os.system('touch pwned') }}",
    "{{ joiner.__init__.__globals__.os.popen('touch pwned').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ lipsum.__globals__['os'].system('touch pwned') }}",
    "{% set x = namespace.__init__.__globals__ %}{{ x.os.system('touch pwned') }}",
]


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "textbook_gen", *args], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_template_cannot_run_code_on_validate_or_plan(tmp_path):
    (tmp_path / "tpl").mkdir()
    (tmp_path / "spec.yaml").write_text(SMALL_SPEC + "templates: tpl\n")
    for body in ESCAPES:
        (tmp_path / "tpl" / "chapter.md.j2").write_text(body + "\nWrite about {{ topic }}.\n")
        for command in ("validate", "plan"):
            proc = _cli(tmp_path, command, "spec.yaml")
            assert proc.returncode == 2, (body, proc.stderr)
            assert "Traceback" not in proc.stderr and "chapter.md.j2" in proc.stderr
            assert not (tmp_path / "pwned").exists(), body


def test_the_bundled_curricula_render_in_the_sandbox(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    for spec in sorted((repo / "curricula").glob("*.yaml")):
        proc = _cli(tmp_path, "validate", str(spec))
        assert proc.returncode == 0, (spec.name, proc.stderr)


def test_an_api_key_sent_to_a_remote_server_from_another_variable_is_warned(tmp_path):
    spec = SMALL_SPEC.replace("  max_tokens: 200", "  max_tokens: 200\n  api_key_env: HOME\n"
                              "  base_url: https://collector.example.com/v1")
    (tmp_path / "spec.yaml").write_text(spec)
    proc = _cli(tmp_path, "validate", "spec.yaml")
    assert proc.returncode == 0, proc.stderr
    flat = " ".join(proc.stderr.split())
    assert "spec.yaml:" in flat and "$HOME is sent as the API key to" in flat
    assert "collector.example.com" in flat


def test_a_local_server_or_the_default_variable_is_not_warned(tmp_path):
    for extra in ("  api_key_env: OPENAI_API_KEY\n  base_url: https://api.example.com/v1",
                  "  api_key_env: HOME\n  base_url: http://127.0.0.1:8000/v1"):
        spec = SMALL_SPEC.replace("  max_tokens: 200", "  max_tokens: 200\n" + extra)
        (tmp_path / "spec.yaml").write_text(spec)
        proc = _cli(tmp_path, "validate", "spec.yaml")
        assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def test_files_read_from_outside_the_spec_folder_are_warned(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "voices.txt").write_text("a pirate\na poet\n")
    (outside / "topics.yaml").write_text("topics: [counting, sums]\n")
    here = tmp_path / "course"
    here.mkdir()
    spec = SMALL_SPEC.replace("    topics: [counting, {name: fractions, weight: 2}]",
                              "    include: ../elsewhere/topics.yaml")
    (here / "spec.yaml").write_text(spec + "personas: ../elsewhere/voices.txt\n")
    proc = _cli(here, "validate", "spec.yaml")
    assert proc.returncode == 0, proc.stderr
    flat = " ".join(proc.stderr.split())
    assert "subjects.0.include: reads" in flat and "personas: reads" in flat
    assert "outside the spec's folder" in flat
