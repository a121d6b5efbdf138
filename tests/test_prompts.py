"""Prompt rendering: bundled and spec templates, system messages, errors with file and line."""

from __future__ import annotations

import pytest

from textbook_gen.errors import TemplateProblem
from textbook_gen.expand import expand
from textbook_gen.prompts import PromptRenderer
from textbook_gen.spec import load_curriculum


def test_bundled_chapter_template_renders_job_coordinates(write_spec):
    spec = load_curriculum(write_spec())
    job = next(expand(spec))
    req = PromptRenderer(spec).render(job)
    assert req.messages[0][0] == "system" and "textbook author" in req.messages[0][1]
    user = req.messages[1][1]
    assert "Topic of this section: counting" in user and "Readers: children" in user
    assert all(w in user for w in job.seed_words)
    assert dict(req.params) == {"max_tokens": 200, "seed": job.seed, "temperature": 0.8}


def test_request_key_changes_with_prompt_and_params(write_spec):
    spec = load_curriculum(write_spec())
    jobs = list(expand(spec))
    r = PromptRenderer(spec)
    keys = {r.render(j).key for j in jobs}
    assert len(keys) == len(jobs)
    assert r.render(jobs[0]).key == PromptRenderer(spec).render(jobs[0]).key


def test_spec_templates_folder_wins_and_sets_system(write_spec, tmp_path):
    path = write_spec(extra="templates: my-prompts\n")
    folder = tmp_path / "my-prompts"
    folder.mkdir()
    (folder / "chapter.md.j2").write_text(
        "{% set system %}Be brief.{% endset %}Explain {{ topic }} to {{ audience }}."
    )
    spec = load_curriculum(path)
    req = PromptRenderer(spec).render(next(expand(spec)))
    assert req.messages == (("system", "Be brief."), ("user", "Explain counting to children."))


def test_undefined_variable_names_template_file_and_line(write_spec, tmp_path):
    path = write_spec(extra="templates: t\n")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "chapter.md.j2").write_text("line one\n{{ topic }}\n{{ no_such_thing }}\n")
    spec = load_curriculum(path)
    with pytest.raises(TemplateProblem) as info:
        PromptRenderer(spec).render(next(expand(spec)))
    message = str(info.value)
    assert "chapter.md.j2:3" in message and "no_such_thing" in message


def test_template_not_found_lists_search_path(write_spec):
    path = write_spec()
    path.write_text(path.read_text().replace("chapter.md.j2", "nope.md.j2"))
    spec = load_curriculum(path)
    problems = PromptRenderer(spec).check()
    assert len(problems) == 1 and "'nope.md.j2' not found" in problems[0]
