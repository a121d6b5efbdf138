"""Diversity beyond the cross product: personas as an axis, topics included from a file,
seed documents (see test_seeds.py for those)."""

from __future__ import annotations

import pytest

from textbook_gen.errors import SpecError
from textbook_gen.expand import count_jobs, jobs
from textbook_gen.prompts import PromptRenderer
from textbook_gen.spec import load_curriculum

BASE = """\
name: voices
seed: 4
audiences: [children, adults]
subjects:
  - name: Numbers
    topics: [counting, fractions]
documents:
  - {kind: chapter, template: chapter.md.j2, per: %s}
"""


def test_personas_multiply_jobs_as_per_says(write_spec):
    personas = "personas: [a retired sailor, a chess coach, a beekeeper]\n"
    with_axis = load_curriculum(write_spec(BASE % "[topic, persona]", extra=personas))
    listed = list(jobs(with_axis))
    assert count_jobs(with_axis) == len(listed) == 2 * 3  # topics x personas
    assert {j.persona for j in listed} == {"a retired sailor", "a chess coach", "a beekeeper"}
    assert len({j.id for j in listed}) == 6
    assert any("/a-chess-coach/" in j.id for j in listed)

    without_axis = load_curriculum(write_spec(BASE % "[topic, audience]", name="b.yaml",
                                              extra=personas))
    plain = load_curriculum(write_spec(BASE % "[topic, audience]", name="c.yaml"))
    voiced = list(jobs(without_axis))
    assert len(voiced) == 4 and all(j.persona for j in voiced)  # filled, not multiplied
    # adding personas changes neither ids nor seed words of the jobs that do not multiply them
    assert [(j.id, j.seed_words) for j in voiced] == [(j.id, j.seed_words) for j in jobs(plain)]
    assert [j.persona for j in voiced] == [j.persona for j in jobs(without_axis)]  # stable


def test_templates_see_the_persona(write_spec, tmp_path):
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "chapter.md.j2").write_text("Write as {{ persona }} about {{ topic }}.")
    spec = load_curriculum(write_spec(BASE % "[topic, persona]",
                                      extra="personas: [a beekeeper]\ntemplates: tpl\n"))
    job = next(jobs(spec))
    assert PromptRenderer(spec).render(job).messages[-1][1] == "Write as a beekeeper about counting."


def test_personas_from_a_file_relative_to_the_spec(write_spec, tmp_path):
    (tmp_path / "voices.txt").write_text("# one per line\na sailor\n\na coach\n")
    spec = load_curriculum(write_spec(BASE % "[topic, persona]", extra="personas: voices.txt\n"))
    assert spec.personas == ["a sailor", "a coach"]
    before = spec.sha256
    (tmp_path / "voices.txt").write_text("a sailor\na coach\na baker\n")
    again = load_curriculum(tmp_path / "spec.yaml")
    assert again.sha256 != before and count_jobs(again) == 6  # the file is part of the spec


def test_a_missing_personas_file_or_axis_is_one_message_with_the_line(write_spec):
    path = write_spec(BASE % "[topic, persona]", extra="personas: nowhere.txt\n")
    with pytest.raises(SpecError) as e:
        load_curriculum(path)
    assert f"{path}:9: personas: cannot read" in str(e.value)
    path = write_spec(BASE % "[topic, persona]", name="d.yaml")
    with pytest.raises(SpecError, match="no personas"):
        load_curriculum(path)


TOPICS = """\
# grown by textbook-gen grow
subject: Numbers
topics:
  - {name: place value, notes: "ones, tens, hundreds"}
  - name: negative numbers
    notes: below zero
"""


def test_a_subject_includes_topics_from_a_file(write_spec, tmp_path):
    (tmp_path / "numbers.topics.yaml").write_text(TOPICS)
    spec = load_curriculum(write_spec(BASE.replace(
        "    topics: [counting, fractions]", "    topics: [counting]\n"
        "    include: numbers.topics.yaml") % "[topic]"))
    topics = spec.subjects[0].topics
    assert [t.name for t in topics] == ["counting", "place value", "negative numbers"]
    assert topics[1].notes == "ones, tens, hundreds"
    assert count_jobs(spec) == 3


def test_an_error_in_an_included_file_names_that_file_and_line(write_spec, tmp_path):
    (tmp_path / "numbers.topics.yaml").write_text(TOPICS.replace("    notes: below zero",
                                                                 "    weight: -1"))
    path = write_spec(BASE.replace("    topics: [counting, fractions]",
                                   "    include: numbers.topics.yaml") % "[topic]")
    with pytest.raises(SpecError) as e:
        load_curriculum(path)
    assert f"{tmp_path / 'numbers.topics.yaml'}:6:" in str(e.value) and "weight" in str(e.value)
    path = write_spec(BASE.replace("    topics: [counting, fractions]",
                                   "    include: missing.yaml") % "[topic]", name="e.yaml")
    with pytest.raises(SpecError) as e:
        load_curriculum(path)
    assert f"{path}:6: subjects[0].include: cannot read" in str(e.value)
