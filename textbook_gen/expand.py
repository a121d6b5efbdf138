"""Spec -> Jobs: one job per document to generate; second stage of the flow.

Pure and deterministic: the same spec and seed give the same jobs, ids and seeds on any
machine (ids from names, seeds from sha256, word choice from ``random.Random(int)``).
Jobs are yielded lazily so a 100,000-job curriculum never sits in memory at once.

A job's identity comes from the names the user wrote (slugs of subject, topic, audience and
style, the document kind and the sample number), so adding, removing or reordering values
changes only the jobs whose prompts change; its seed leaves out the curriculum's name, so a
rename re-sends nothing either. Seeds are 63-bit (``identity="names64"``), so two samples of
one cell never share a request (and one stored answer) when their prompts are alike; their low
32 bits are the seed older stores used, what servers are sent and what draws use. Run stores
made before keep what they were made with (``store.RunStore.job_identity``): ``"names"``
(32-bit seeds) or position-based ids (``"positions"``), so reopening one re-sends nothing.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from itertools import islice
from typing import Any

from textbook_gen.spec import Curriculum, DocumentSpec, Subject, Topic, slugify


@dataclass(frozen=True, slots=True)
class Job:
    """One document to generate, with every coordinate its prompt may use."""

    id: str
    kind: str
    template: str
    subject: str
    subject_description: str
    topic: str
    topic_notes: str
    audience: str
    style: str
    persona: str  # "" when the spec has no personas
    sample: int
    seed: int
    seed_words: tuple[str, ...]
    max_tokens: int
    temperature: float
    cell: str  # the id of the job's cell: kind and coordinates, without the sample
    sample_id: str  # the id of the sample it answers (candidate 0's id)
    sample_seed: int  # the sample's seed: what its candidates and revisions share
    seed_bits: int = 32  # 63 for run stores of identity "names64"; what derived seeds keep
    candidate: int = 0  # best-of-n: which answer to the sample's prompt (0: the sample's own id)
    revision: int = 0  # self-revision round (the job's template is then the revise template)


def candidate_job(job: Job, k: int) -> Job:
    """Answer ``k`` of best-of-n to the same prompt: the same seed words, another seed."""
    if k == 0:
        return job
    return replace(job, id=f"{job.sample_id}/c{k}",
                   seed=job_seed(job.seed, f"c{k}", job.seed_bits), candidate=k)


def revision_job(job: Job, round_: int, template: str) -> Job:
    """Revision ``round_`` of a sample (job: the sample's own job)."""
    return replace(job, id=f"{job.sample_id}/r{round_}",
                   seed=job_seed(job.seed, f"r{round_}", job.seed_bits), template=template,
                   revision=round_)


@cache
def _word_list() -> tuple[str, ...]:
    text = resources.files("textbook_gen").joinpath("seedwords.txt").read_text("utf-8")
    return tuple(text.split())


def job_seed(curriculum_seed: int, job_id: str, bits: int = 32) -> int:
    """A seed from a parent seed and a name (the curriculum's seed and a job id, or a job's
    seed and a candidate or revision): the first 4 bytes of its sha256, as run stores made
    before 63-bit seeds have it; with ``bits`` 63 (new stores), 31 more bits of the same hash
    above them. The low 32 bits are what a server is sent and what the job draws from
    (``draw_seed``), so a job's prompt and sampling are the same in both."""
    digest = hashlib.sha256(f"{curriculum_seed}:{job_id}".encode()).digest()
    low = int.from_bytes(digest[:4], "big")
    if bits == 32:
        return low
    return (int.from_bytes(digest[4:8], "big") >> 1) << 32 | low


def draw_seed(seed: int) -> int:
    """What a job's random draws (seed words, axes it does not multiply, persona, seed
    document) are seeded with: the seed's low 32 bits, the seed servers are sent."""
    return seed % 2**32


def count_jobs(spec: Curriculum) -> int:
    """Number of jobs ``expand`` yields, computed without expanding."""
    return spec.job_count()


# "names64": ids from names, 63-bit seeds (every new run store); "names": ids from names,
# 32-bit seeds; "positions": ids from positions, 32-bit seeds (the oldest stores)
IDENTITIES = ("names64", "names", "positions")
NEW_IDENTITY = "names64"


def seed_bits(identity: str) -> int:
    """How many bits a store of this identity's job seeds have."""
    return 63 if identity == "names64" else 32


def expand(spec: Curriculum, identity: str = NEW_IDENTITY) -> Iterator[Job]:
    """Yield every job, documents entry by entry, in a stable order."""
    if identity not in IDENTITIES:
        raise ValueError(f"unknown job identity {identity!r}")
    for place in _places(spec):
        yield from _expand_place(spec, place, identity)


def jobs(spec: Curriculum, limit: int | None = None, identity: str = NEW_IDENTITY) -> Iterator[Job]:
    """The first ``limit`` jobs (all when None), for ``--limit``."""
    return islice(expand(spec, identity), limit)


Axis = list[tuple[int, str] | tuple[None, None]]  # (index, value); (None, None): not multiplied


@dataclass(frozen=True, slots=True)
class _Place:
    """One place of one document kind: its jobs are audiences x styles x samples."""

    doc: DocumentSpec
    subject: Subject
    topic: Topic | None
    audiences: Axis
    styles: Axis
    personas: Axis
    samples: int  # first pass, per cell
    weight: int

    @property
    def size(self) -> int:
        return (len(self.audiences) * len(self.styles) * len(self.personas) * self.samples
                * self.doc.candidates)


def _places(spec: Curriculum) -> Iterator[_Place]:
    """Every (document kind, place) in expansion order."""
    for doc in spec.documents:
        audiences: Axis = (list(enumerate(spec.audiences)) if "audience" in doc.per
                           else [(None, None)])
        styles: Axis = list(enumerate(spec.styles)) if "style" in doc.per else [(None, None)]
        personas: Axis = (list(enumerate(spec.personas)) if "persona" in doc.per
                          else [(None, None)])
        for subject in spec.subjects:
            topics: list[Topic | None] = list(subject.topics) if "topic" in doc.per else [None]
            for topic in topics:
                weight = topic.weight if topic else 1
                yield _Place(doc, subject, topic, audiences, styles, personas,
                             doc.first_samples * weight, weight)


def _expand_place(spec: Curriculum, p: _Place, identity: str) -> Iterator[Job]:
    # nested loops, not itertools.product: product would hold range(samples) as a tuple
    for ai, audience in p.audiences:
        for si, style in p.styles:
            for pi, persona in p.personas:
                for n in range(p.samples):
                    job = _make_job(spec, p.doc, p.subject, p.topic, ai, audience, si, style,
                                    n, identity, pi, persona)
                    for k in range(p.doc.candidates):
                        yield candidate_job(job, k)


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell of one document kind (its coordinates without the sample): the unit the
    closed loop fills to ``target`` kept documents, sending at most ``cap`` samples."""

    key: str  # == Job.cell of its jobs
    kind: str
    first: int  # samples the first pass sends
    cap: int  # samples it may send at most
    target: int | None  # kept documents wanted (None: no quota)
    candidates: int
    _make: tuple[Any, ...]

    def job(self, n: int) -> Job:
        """Sample ``n`` of the cell (candidate 0)."""
        spec, doc, subject, topic, ai, audience, si, style, identity, pi, persona = self._make
        return _make_job(spec, doc, subject, topic, ai, audience, si, style, n, identity, pi,
                         persona)


def cells(spec: Curriculum, limit: int | None = None, identity: str = NEW_IDENTITY) -> Iterator[Cell]:
    """Every cell in expansion order; with ``limit``, those the first ``limit`` jobs reach
    (rounded up to whole samples: a sample's candidates go together)."""
    left = limit
    for p in _places(spec):
        for ai, audience in p.audiences:
            for si, style in p.styles:
                for pi, persona in p.personas:
                    if left is not None and left <= 0:
                        return
                    make = (spec, p.doc, p.subject, p.topic, ai, audience, si, style, identity,
                            pi, persona)
                    first = p.samples if left is None else min(p.samples,
                                                               -(-left // p.doc.candidates))
                    cell = Cell("", p.doc.kind, first, p.doc.sample_cap * p.weight,
                                p.doc.target_kept * p.weight if p.doc.target_kept else None,
                                p.doc.candidates, make)
                    yield replace(cell, key=cell.job(0).cell)
                    if left is not None:
                        left -= first * p.doc.candidates


def job_at(spec: Curriculum, index: int, identity: str = NEW_IDENTITY) -> Job:
    """The job ``expand`` yields at ``index``, found by arithmetic over the cross product
    (places, then audiences, styles and samples), without enumerating the jobs before it."""
    for p in _places(spec):
        if index >= p.size:
            index -= p.size
            continue
        c = p.doc.candidates
        per_persona = p.samples * c
        a, rest = divmod(index, len(p.styles) * len(p.personas) * per_persona)
        st, rest = divmod(rest, len(p.personas) * per_persona)
        pe, rest = divmod(rest, per_persona)
        n, k = divmod(rest, c)
        (ai, audience), (si, style), (pi, persona) = p.audiences[a], p.styles[st], p.personas[pe]
        job = _make_job(spec, p.doc, p.subject, p.topic, ai, audience, si, style, n, identity,
                        pi, persona)
        return candidate_job(job, k)
    raise IndexError(index)


def distinct_jobs(spec: Curriculum) -> Iterator[Job]:
    """One job for every distinct combination of the variables a template sees (document,
    place, audience, style), sample 0: what ``validate`` renders to find template errors that
    only some jobs reach."""
    for doc in spec.documents:
        for subject in spec.subjects:
            places: list[Topic | None] = list(subject.topics) if "topic" in doc.per else [None]
            for topic in places:
                for ai, audience in enumerate(spec.audiences):
                    for si, style in enumerate(spec.styles):
                        axis: Axis = list(enumerate(spec.personas)) or [(None, None)]
                        for pi, persona in axis:
                            yield _make_job(spec, doc, subject, topic, ai, audience, si, style,
                                            0, NEW_IDENTITY, pi, persona)


def distinct_job_count(spec: Curriculum) -> int:
    places = sum(len(s.topics) for s in spec.subjects)
    per_doc = [places if "topic" in d.per else len(spec.subjects) for d in spec.documents]
    return sum(per_doc) * len(spec.audiences) * len(spec.styles) * max(1, len(spec.personas))


def _job_name(spec: Curriculum, place: str, doc: DocumentSpec, ai: int | None,
              audience: str | None, si: int | None, style: str | None, n: int,
              identity: str, pi: int | None = None,
              persona: str | None = None) -> tuple[str, int, str]:
    """The job's id, seed and cell."""
    if identity == "positions":  # stores made before ids came from names
        coords = [f"a{ai}" if ai is not None else "", f"s{si}" if si is not None else "",
                  f"p{pi}" if pi is not None else "", f"n{n}"]
        job_id = f"{spec.name}/{place}/{doc.kind}/" + "-".join(c for c in coords if c)
        return job_id, job_seed(spec.seed, job_id), job_id.rsplit("n", 1)[0].rstrip("-")
    bits = seed_bits(identity)
    # kind first: within one kind every id has the same shape, so no two can collide
    parts = [doc.kind, place]
    parts += [slugify(x) for x in (audience, style, persona) if x is not None]
    local = "/".join([*parts, f"n{n}"])
    return (f"{spec.name}/{local}", job_seed(spec.seed, local, bits),
            f"{spec.name}/" + "/".join(parts))


def _make_job(
    spec: Curriculum,
    doc: DocumentSpec,
    subject: Subject,
    topic: Topic | None,
    ai: int | None,
    audience: str | None,
    si: int | None,
    style: str | None,
    n: int,
    identity: str = NEW_IDENTITY,
    pi: int | None = None,
    persona: str | None = None,
) -> Job:
    place = slugify(subject.name) + (f"/{slugify(topic.name)}" if topic else "")
    job_id, seed, cell = _job_name(spec, place, doc, ai, audience, si, style, n, identity, pi,
                                   persona)
    rng = random.Random(draw_seed(seed))
    if persona is None and spec.personas:  # its own draw: the seed words stay as they were
        persona = random.Random(draw_seed(seed) ^ 0x5EED).choice(spec.personas)
    # Axes the entry does not multiply over are still varied, picked by the job's seed.
    if audience is None:
        audience = rng.choice(spec.audiences)
    if style is None:
        style = rng.choice(spec.styles)
    words = tuple(rng.sample(_word_list(), spec.seed_words)) if spec.seed_words else ()
    return Job(
        id=job_id,
        kind=doc.kind,
        template=doc.template,
        subject=subject.name,
        subject_description=subject.description,
        topic=topic.name if topic else "",
        topic_notes=topic.notes if topic else "",
        audience=audience,
        style=style,
        persona=persona or "",
        sample=n,
        seed=seed,
        seed_words=words,
        max_tokens=doc.max_tokens or spec.model.max_tokens,
        temperature=doc.temperature if doc.temperature is not None else spec.model.temperature,
        cell=cell,
        sample_id=job_id,
        sample_seed=seed,
        seed_bits=seed_bits(identity),
    )
