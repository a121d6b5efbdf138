"""Expansion: counts follow the spec, ids and seeds are stable, seeds add variety."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, SMALL_SPEC

from textbook_gen.expand import count_jobs, expand
from textbook_gen.spec import load_curriculum


def test_counts_match_the_spec_cross_products(write_spec):
    spec = load_curriculum(write_spec())
    jobs = list(expand(spec))
    # topics: counting (w1) + fractions (w2) = 3 places; x 2 audiences x 1 style x 1 sample
    assert len(jobs) == 6 == count_jobs(spec)
    assert sum(j.topic == "fractions" for j in jobs) == 4


MULTI = """
name: multi
audiences: [a, b, c]
styles: [x, y]
subjects:
  - {name: S1, topics: [t1, {name: t2, weight: 3}]}
  - {name: S2, topics: [t3]}
documents:
  - {kind: chapter, template: chapter.md.j2, per: [topic, audience, style], samples: 2}
  - {kind: exercises, template: exercises.md.j2, per: [subject], samples: 3}
"""


def test_multiple_document_kinds_and_axes(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(MULTI)
    spec = load_curriculum(path)
    jobs = list(expand(spec))
    chapters = [j for j in jobs if j.kind == "chapter"]
    exercises = [j for j in jobs if j.kind == "exercises"]
    assert len(chapters) == (1 + 3 + 1) * 3 * 2 * 2
    assert len(exercises) == 2 * 3
    assert len(jobs) == count_jobs(spec)
    assert len({j.id for j in jobs}) == len(jobs)
    # axes not multiplied over are still filled in, from the spec's lists
    assert all(j.audience in spec.audiences and j.style in spec.styles for j in exercises)
    assert {j.topic for j in exercises} == {""}


def test_same_spec_gives_same_jobs_in_another_process(write_spec):
    path = write_spec()
    here = [(j.id, j.seed, j.seed_words) for j in expand(load_curriculum(path))]
    code = (
        "import sys, json; from textbook_gen.spec import load_curriculum;"
        "from textbook_gen.expand import expand;"
        "print(json.dumps([[j.id, j.seed, list(j.seed_words)] for j in"
        " expand(load_curriculum(sys.argv[1]))]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""},
                         cwd=REPO)
    import json

    there = [(i, s, tuple(w)) for i, s, w in json.loads(out.stdout)]
    assert here == there


def test_seed_changes_seeds_and_words_but_not_ids(write_spec):
    a = list(expand(load_curriculum(write_spec())))
    b = list(expand(load_curriculum(write_spec(SMALL_SPEC.replace("seed: 5", "seed: 6"),
                                               name="other.yaml"))))
    assert [j.id for j in a] == [j.id for j in b]
    assert [j.seed for j in a] != [j.seed for j in b]
    assert [j.seed_words for j in a] != [j.seed_words for j in b]


def test_samples_of_one_prompt_get_different_words(write_spec):
    spec = load_curriculum(write_spec())
    jobs = list(expand(spec))
    fractions = [j for j in jobs if j.topic == "fractions" and j.audience == "children"]
    assert len(fractions) == 2
    assert fractions[0].seed_words != fractions[1].seed_words
    assert all(len(j.seed_words) == 3 for j in jobs)


def test_expansion_is_lazy_for_large_specs(tmp_path):
    """The first jobs of a 10^9-job spec (the most a spec may ask for) come out under a 1 GB
    address-space limit: an
    expansion that built the list (or an itertools.product over the samples) could not."""
    path = tmp_path / "big.yaml"
    topics = ", ".join(f"{{name: t{i}, weight: 1000}}" for i in range(1000))
    audiences = "a0"
    path.write_text(f"""
name: big
audiences: [{audiences}]
styles: [s1]
subjects: [{{name: S, topics: [{topics}]}}]
documents: [{{kind: chapter, template: chapter.md.j2, samples: 1000}}]
""")
    code = (
        "import resource, sys, itertools\n"
        "from textbook_gen.spec import load_curriculum\n"
        "from textbook_gen.expand import count_jobs, expand\n"
        "spec = load_curriculum(sys.argv[1])\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "first = list(itertools.islice(expand(spec), 3))\n"
        "print(count_jobs(spec), first[0].id, first[2].id)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1000000000", "big/chapter/s/t0/a0/s1/n0",
                                  "big/chapter/s/t0/a0/s1/n2"]


def test_job_at_finds_every_job_by_index(tmp_path):
    from textbook_gen.expand import job_at

    path = tmp_path / "s.yaml"
    path.write_text(MULTI)
    spec = load_curriculum(path)
    every = list(expand(spec))
    assert [job_at(spec, i) for i in range(len(every))] == every


WIDE = """\
name: wide
description: one cell, many samples, a template that uses neither sample nor job_id.
seed: 5
model: {provider: openai, name: gpt-4o-mini, max_tokens: 200}
audiences: [children]
subjects:
  - name: Numbers
    topics: [counting]
documents:
  - {kind: chapter, template: chapter.md.j2, per: [topic], samples: 60000}
"""


def test_two_samples_of_a_large_cell_never_share_a_request(write_spec):
    """With 32-bit seeds, samples 43,461 and 56,079 of this cell drew the same seed, so the
    same prompt and the same request: one stored answer served both. New stores use 63-bit
    seeds; a store made before keeps its 32-bit seeds (nothing stored is paid again)."""
    from textbook_gen.expand import job_at
    from textbook_gen.prompts import PromptRenderer
    from textbook_gen.spec import load_curriculum

    spec = load_curriculum(write_spec(WIDE))
    render = PromptRenderer(spec).render
    old = [render(job_at(spec, i, "names")) for i in (43461, 56079)]
    assert old[0].key == old[1].key  # what the 32-bit seeds of older stores do
    new = [render(job_at(spec, i)) for i in (43461, 56079)]
    assert new[0].key != new[1].key
    assert new[0].param["seed"] >= 2**32 or new[1].param["seed"] >= 2**32
