"""Spec loading: valid examples pass; broken specs report every problem with file and line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from textbook_gen.errors import SpecError
from textbook_gen.spec import load_curriculum


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "curricula").rglob("*.yaml")
                                         if not p.name.endswith(".topics.yaml")),
                         ids=lambda p: p.name)
def test_example_curricula_are_valid(path):
    spec = load_curriculum(path)
    assert spec.subjects and spec.documents
    assert len(spec.sha256) == 64
    from textbook_gen.checks import spec_problems

    assert spec_problems(spec) == []  # every template renders for every combination


def test_broken_spec_reports_every_problem_with_its_line(write_spec):
    path = write_spec("""\
        name: Bad Name
        model:
          provider: openai
          temprature: 0.5
          max_tokens: -3
        subjects:
          - name: Numbers
            topics: [counting, {name: fractions, weight: 0}]
        documents:
          - {kind: chapter, template: chapter.md.j2, per: [audience]}
        """)
    with pytest.raises(SpecError) as info:
        load_curriculum(path)
    problems = info.value.problems
    text = "\n".join(problems)
    assert f"{path}:1: name:" in text
    assert f"{path}:4: model.temprature: unknown key (did you mean 'temperature'?)" in text
    assert f"{path}:5: model.max_tokens:" in text
    assert f"{path}:8: subjects[0].topics[1].weight:" in text
    assert f"{path}:10: documents[0].per:" in text and "'topic' or 'subject'" in text
    assert len(problems) == 5


def test_missing_required_key_and_unknown_top_level_key(write_spec):
    path = write_spec("name: x\nsubject: []\n")
    with pytest.raises(SpecError) as info:
        load_curriculum(path)
    text = "\n".join(info.value.problems)
    assert "subject: unknown key (did you mean 'subjects'?)" in text
    assert "subjects: required key is missing" in text
    assert "documents: required key is missing" in text


def test_yaml_syntax_error_names_the_line(write_spec):
    path = write_spec("name: x\nsubjects: [a, b\ndocuments: []\n")
    with pytest.raises(SpecError) as info:
        load_curriculum(path)
    assert info.value.problems[0].startswith(f"{path}:")
    assert "YAML syntax" in info.value.problems[0]


def test_duplicate_key_is_an_error(write_spec):
    path = write_spec(extra="seed: 9\n")  # SMALL_SPEC already sets seed
    with pytest.raises(SpecError) as info:
        load_curriculum(path)
    assert any("seed: key appears twice" in p for p in info.value.problems)


def test_colliding_topic_names_are_rejected(write_spec):
    path = write_spec("""\
        name: x
        subjects: [{name: A, topics: [Fractions, fractions!]}]
        documents: [{kind: chapter, template: chapter.md.j2}]
        """)
    with pytest.raises(SpecError, match="collides"):
        load_curriculum(path)


def test_validate_cli_exit_code_and_no_traceback(write_spec):
    path = write_spec("name: x\nmodel: {tempreture: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "did you mean 'temperature'" in proc.stderr
    assert "3 problems found" in proc.stderr


def test_validate_cli_accepts_good_spec(write_spec):
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "validate", str(write_spec())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "6 jobs" in proc.stdout


def test_missing_template_is_reported_by_validate(write_spec):
    path = write_spec(extra="templates: mine\n")
    (path.parent / "mine").mkdir()
    (path.parent / "mine" / "chapter.md.j2").write_text("{{ nosuchvar }}")
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    # validate renders every template: the undefined variable is found before a run pays
    assert proc.returncode == 2
    assert "chapter.md.j2:1: 'nosuchvar' is undefined" in proc.stderr
    (path.parent / "mine" / "chapter.md.j2").write_text("{% if %}")
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "chapter.md.j2:1:" in proc.stderr


def test_error_messages_keep_square_brackets(capsys):
    # rich markup must not eat "[local]" in an install hint
    from textbook_gen.cli import _fail
    from textbook_gen.errors import ConfigError

    exit_ = _fail(ConfigError("install it: pip install 'textbook-gen[local]'"))
    assert exit_.exit_code == 2
    assert "pip install 'textbook-gen[local]'" in capsys.readouterr().err


def test_examples_copy_never_overwrites_without_force(tmp_path):
    run = [sys.executable, "-m", "textbook_gen", "examples", "--copy", str(tmp_path / "mine")]
    assert subprocess.run(run, capture_output=True, timeout=60).returncode == 0
    edited = tmp_path / "mine" / "algebra.yaml"
    assert (tmp_path / "mine" / "prompts" / "chapter.md.j2").is_file()  # templates to edit
    edited.write_text("# my edits\n")
    again = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already exist" in again.stderr
    assert edited.read_text() == "# my edits\n"
    forced = subprocess.run([*run, "--force"], capture_output=True, timeout=60)
    assert forced.returncode == 0 and edited.read_text() != "# my edits\n"


def test_init_writes_a_valid_spec_that_names_every_key(tmp_path):
    from pydantic import BaseModel

    from textbook_gen.spec import Curriculum, _model_in

    run = [sys.executable, "-m", "textbook_gen", "init", "my-course"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    spec = tmp_path / "my-course" / "my-course.yaml"
    assert (tmp_path / "my-course" / "templates-small" / "chapter.md.j2").is_file()
    check = subprocess.run([sys.executable, "-m", "textbook_gen", "validate", str(spec)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    text = spec.read_text()

    def keys(model: type[BaseModel]):
        for name, field in model.model_fields.items():
            yield name
            inner = _model_in(field.annotation)
            if inner is not None:
                yield from keys(inner)

    missing = sorted({k for k in keys(Curriculum) if f"{k}:" not in text})
    assert not missing, f"the scaffold does not show {missing}"
    again = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
