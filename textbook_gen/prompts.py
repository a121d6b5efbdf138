"""Jinja2 prompt templates: Job -> Request; third stage of the flow.

Templates are looked up in the spec's own ``templates:`` folder first, then in the bundled
``prompts/``. A template may set ``system`` with ``{% set system %}...{% endset %}``; the rest
of its output is the user message. Undefined variables are errors (StrictUndefined).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.sandbox

from textbook_gen.errors import TemplateProblem
from textbook_gen.expand import Job
from textbook_gen.providers.base import Request
from textbook_gen.spec import Curriculum

if TYPE_CHECKING:
    from textbook_gen.seeds import SeedIndex

CHECK_RENDERS = 5_000  # distinct combinations rendered by validate before it samples


def data_dir(name: str) -> Path:
    """A bundled data folder ("prompts", "curricula"): inside the wheel, or in a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_data" / name, package.parent / name):
        if candidate.is_dir():
            return candidate
    raise TemplateProblem(f"bundled folder {name!r} not found next to {package}; reinstall the package")


@dataclass(frozen=True)
class RenderedPrompt:
    system: str | None
    user: str
    answer_start: str | None = None  # ``{% set answer_start %}``: the model continues it


# what validate gives templates for seed_document when the spec has seeds (the index is built
# by plan and run, not by validate)
SEED_EXAMPLE = {"id": "example", "text": "An extract of a seed document.", "source": "seeds",
                "sha256": "0" * 64}
# what validate gives the revise template: every variable it sees, with stand-in values
REVISE_EXAMPLE = {"draft": "## A draft\n\nSome text.", "critique": "Too short.", "score": "2",
                  "below": "3"}


class PromptRenderer:
    """Renders a curriculum's jobs into requests for its model."""

    def __init__(self, spec: Curriculum, *, provider: str | None = None, model: str | None = None,
                 seeds: SeedIndex | None = None):
        self.spec = spec
        self.seeds = seeds
        self.provider = provider or spec.model.provider
        self.model = model or spec.model.name
        for folder in spec.template_dirs:
            if not folder.is_dir():
                raise TemplateProblem(
                    f"{spec.where('templates')}: templates: folder {folder} does not exist"
                    " (it is relative to the spec file)"
                )
        self.search_path = [*spec.template_dirs, data_dir("prompts")]
        # A template engine is a language: a spec's templates render in Jinja2's sandbox, so
        # one from a stranger cannot reach Python (``cycler.__init__.__globals__.os``)
        self.env = jinja2.sandbox.SandboxedEnvironment(
            loader=jinja2.FileSystemLoader([str(p) for p in self.search_path]),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
        )
        self._hashes: dict[str, str] = {}
        self._templates: dict[str, jinja2.Template] = {}
        from textbook_gen.providers import provider_class

        self.answer_start_ok = provider_class(self.provider).supports_answer_start

    def check(self) -> list[str]:
        """Load every template the spec names and render it for every distinct combination of
        the variables it sees (document, place, audience, style; a seeded sample of
        CHECK_RENDERS when there are more); return problems instead of raising."""
        problems = []
        for i, doc in enumerate(self.spec.documents):
            try:
                self.template(doc.template)
            except TemplateProblem as e:
                problems.append(f"{self.spec.where('documents', i, 'template')}: {e}")
        if problems:
            return problems
        from textbook_gen.expand import distinct_job_count, distinct_jobs

        total = distinct_job_count(self.spec)
        keep = 1.0 if total <= CHECK_RENDERS else CHECK_RENDERS / total
        pick = random.Random(0)
        seen: set[str] = set()
        revise = self.spec.curation.revise if self.spec.curation.enabled else None
        if revise is not None:
            try:
                self.template(revise.template)
            except TemplateProblem as e:
                return [f"{self.spec.where('curation', 'revise', 'template')}: {e}"]
        for job in distinct_jobs(self.spec):
            if keep < 1.0 and pick.random() >= keep:
                continue
            try:
                self.render_prompt(job)
                if revise is not None:
                    from textbook_gen.expand import revision_job

                    self.render_prompt(revision_job(job, 1, revise.template), REVISE_EXAMPLE)
            except TemplateProblem as e:
                if str(e) not in seen:  # one line per distinct problem, with one example job
                    seen.add(str(e))
                    problems.append(f"{e} (for example job {job.id})")
        return problems

    def template(self, name: str) -> jinja2.Template:
        if name not in self._templates:
            try:
                self._templates[name] = self.env.get_template(name)
            except jinja2.TemplateNotFound:
                where = ", ".join(str(p) for p in self.search_path)
                raise TemplateProblem(
                    f"{self.spec.source_path}: template {name!r} not found (searched {where})"
                ) from None
            except jinja2.TemplateSyntaxError as e:
                raise TemplateProblem(f"{e.filename or name}:{e.lineno}: {e.message}") from None
            except UnicodeDecodeError as e:
                raise TemplateProblem(f"template {name!r}: not UTF-8 text ({e.reason} at byte"
                                      f" {e.start}); save it as UTF-8") from None
        return self._templates[name]

    def template_sha256(self, name: str) -> str:
        if name not in self._hashes:
            filename = self.template(name).filename
            data = Path(filename).read_bytes() if filename else name.encode()
            self._hashes[name] = hashlib.sha256(data).hexdigest()
        return self._hashes[name]

    def template_hashes(self) -> dict[str, str]:
        return {d.template: self.template_sha256(d.template) for d in self.spec.documents}

    @cached_property
    def _curriculum_vars(self) -> dict[str, Any]:
        s = self.spec
        return {
            "name": s.name,
            "description": s.description,
            "audiences": s.audiences,
            "styles": s.styles,
            "personas": s.personas,
            "subjects": [x.name for x in s.subjects],
        }

    def render_prompt(self, job: Job, extra: dict[str, Any] | None = None) -> RenderedPrompt:
        """``extra``: variables only some templates see (the revise template's draft,
        critique, score and below)."""
        tmpl = self.template(job.template)
        context = {
            **self.spec.variables,
            "curriculum": self._curriculum_vars,
            "kind": job.kind,
            "subject": job.subject,
            "subject_description": job.subject_description,
            "topic": job.topic,
            "topic_notes": job.topic_notes,
            "audience": job.audience,
            "style": job.style,
            "persona": job.persona,
            "sample": job.sample,
            "seed_words": list(job.seed_words),
            "job_id": job.id,
            "seed_document": self._seed(job),
            **(extra or {}),
        }
        try:
            module = tmpl.make_module(context)
        except jinja2.UndefinedError as e:
            raise TemplateProblem(f"{_where(e, tmpl)}: {e.message}") from None
        except jinja2.TemplateError as e:
            raise TemplateProblem(f"{_where(e, tmpl)}: {e}") from None
        except Exception as e:  # noqa: BLE001 - the template's own code failed (1/0, a bad type)
            raise TemplateProblem(f"{_where(e, tmpl)}: {type(e).__name__}: {e}") from None
        system = getattr(module, "system", None)
        system = str(system).strip() if system is not None else self.spec.model.system
        user = str(module).strip()
        if not user:
            raise TemplateProblem(f"{tmpl.filename or tmpl.name}: renders an empty prompt (the"
                                  " request would still be paid for); check its conditions")
        start = getattr(module, "answer_start", None)
        start = str(start).lstrip() if start is not None else None
        if start and not self.answer_start_ok:
            raise TemplateProblem(
                f"{tmpl.filename or tmpl.name}: sets answer_start, which the {self.provider}"
                " provider cannot continue (local and anthropic can); remove it for this model")
        return RenderedPrompt(system or None, user, start or None)

    def _seed(self, job: Job) -> dict[str, str] | None:
        if self.seeds is not None:
            return self.seeds.for_job(job).as_template()
        return SEED_EXAMPLE if self.spec.seeds is not None else None

    def seed_provenance(self, job: Job) -> dict[str, str] | None:
        """The seed document a job's prompt was grounded in: id, sha256, source."""
        return self.seeds.for_job(job).provenance() if self.seeds is not None else None

    def render(self, job: Job, extra: dict[str, Any] | None = None) -> Request:
        prompt = self.render_prompt(job, extra)
        messages = [("system", prompt.system)] if prompt.system else []
        messages.append(("user", prompt.user))
        if prompt.answer_start:
            messages.append(("assistant", prompt.answer_start))
        params: dict[str, Any] = {
            "temperature": job.temperature,
            "max_tokens": job.max_tokens,
            "top_p": self.spec.model.top_p,
            "seed": job.seed,
        }
        return Request.build(self.provider, self.model, messages, params)


def _where(err: Exception, tmpl: jinja2.Template) -> str:
    """file:line of the template frame in a render traceback."""
    import traceback

    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        # frames of compiled template code carry the template's file name and a code line
        if frame.filename == tmpl.filename and frame.lineno is not None:
            line = tmpl.get_corresponding_lineno(frame.lineno)
    where = tmpl.filename or tmpl.name
    return f"{where}:{line}" if line else str(where)
