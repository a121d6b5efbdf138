"""One curriculum, end to end: spec -> jobs -> requests -> generator -> store -> outputs.

The orchestrator: the CLI calls ``plan`` and ``run_curriculum``; both are plain functions
over a validated ``Curriculum`` so tests and other programs can call them too. Every paid
stage of a run (generation, batch, judge) reserves and accounts in the run's one ``Ledger``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from textbook_gen.checks import spec_problems
from textbook_gen.errors import (
    BudgetExceeded,
    CollapseStopped,
    ConfigError,
    Interrupted,
    SpecError,
)
from textbook_gen.expand import NEW_IDENTITY, Job, count_jobs, jobs
from textbook_gen.generator import GenerationStats, Generator, WorkItem, drive
from textbook_gen.ledger import Ledger
from textbook_gen.progress import Progress
from textbook_gen.prompts import PromptRenderer
from textbook_gen.providers import Provider, Request, provider_class
from textbook_gen.spec import Curriculum
from textbook_gen.store import RunStore
from textbook_gen.tokens import ModelPrice, estimate_input_tokens, price_for
from textbook_gen.watch import Alarm, Watch


@dataclass
class Overrides:
    """Command-line settings that win over the spec."""

    provider: str | None = None
    model: str | None = None
    base_url: list[str] = field(default_factory=list)
    concurrency: int | None = None
    max_cost_usd: float | None = None
    max_total_tokens: int | None = None
    retry_truncated: bool | None = None
    stop_on_collapse: bool | None = None


def apply_overrides(spec: Curriculum, o: Overrides) -> Curriculum:
    model: dict[str, Any] = {}
    if o.provider:
        model["provider"] = o.provider
        if not o.model and o.provider != spec.model.provider:
            raise ConfigError(f"--provider {o.provider} needs --model too (the spec's model "
                              f"{spec.model.name!r} belongs to {spec.model.provider})")
    if o.model:
        model["name"] = o.model
    if o.base_url:
        model["base_url"] = o.base_url
    engine = {k: v for k, v in {
        "concurrency": o.concurrency, "max_cost_usd": o.max_cost_usd,
        "max_total_tokens": o.max_total_tokens, "retry_truncated": o.retry_truncated,
    }.items() if v is not None}
    data = spec.model_dump(exclude_unset=True)  # keep "unset" visible: providers look at it
    data.setdefault("model", {}).update(model)
    data.setdefault("engine", {}).update(engine)
    if o.stop_on_collapse is not None:
        data.setdefault("watch", {})["stop"] = o.stop_on_collapse
    try:
        new = Curriculum.model_validate(data)
    except ValidationError as e:
        raise ConfigError("; ".join(_option_error(x) for x in e.errors())) from None
    new._source, new._sha256, new._lines = spec._source, spec._sha256, spec._lines
    new._to_grow = spec._to_grow
    return new


_OPTIONS = {("engine", "max_cost_usd"): "--max-cost", ("engine", "max_total_tokens"): "--max-tokens",
            ("engine", "concurrency"): "--concurrency", ("model", "provider"): "--provider",
            ("model", "name"): "--model", ("model", "base_url"): "--base-url"}


def _option_error(e: Any) -> str:
    loc = tuple(x for x in e["loc"] if not isinstance(x, int))
    name = _OPTIONS.get(loc[:2], ".".join(map(str, loc)))
    return f"{name}: {e['msg']} (got {e.get('input')!r})"


def open_seeds(spec: Curriculum, out_dir: Path, progress: Progress | None = None) -> Any:
    """The spec's seed index (built beside the run the first time), or None without seeds."""
    if spec.seeds is None:
        return None
    from textbook_gen.seeds import SeedIndex

    if progress is not None:
        progress.message(f"seed documents: {spec.seeds.path} (indexed once, beside the run)")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return SeedIndex(spec.seeds, spec.source_path.parent, out_dir)


def default_out_dir(spec: Curriculum) -> Path:
    return Path("out") / spec.name


def spec_price(spec: Curriculum) -> ModelPrice | None:
    return price_for(spec.model.provider, spec.model.name, spec.prices)


def job_count(spec: Curriculum, limit: int | None = None) -> int:
    n = count_jobs(spec)
    return min(n, limit) if limit is not None else n


# ----------------------------------------------------------------------------- plan


@dataclass
class Plan:
    jobs: int
    by_kind: dict[str, int]
    input_tokens: int
    max_output_tokens: int
    stored: int  # already answered in the run store: will not be sent again
    spent_usd: float | None  # what the stored requests cost (None: unknown, no price)
    price: ModelPrice | None
    examples: list[tuple[Job, str]]  # (job, rendered prompt) for --show
    judge: JudgePlan | None = None
    sampled: int | None = None  # past PLAN_EXACT jobs: figures scaled from this many renders
    most: MostPlan | None = None  # the closed loop at every cap (None: one pass is all)
    grow: GrowPlan | None = None  # subjects whose include file `grow` has yet to write

    @property
    def to_send(self) -> int:
        return self.jobs - self.stored

    def cost(self, output_share: float = 1.0) -> float | None:
        """Estimated USD for what is still to send; output at ``output_share`` of max_tokens."""
        if self.price is None:
            return None
        share = self.to_send / self.jobs if self.jobs else 0.0
        return self.price.cost(int(self.input_tokens * share),
                               int(self.max_output_tokens * share * output_share))

    def total_cost(self, output_share: float = 1.0) -> float | None:
        """Generation still to send plus, at most, judging every document."""
        gen = self.cost(output_share)
        if self.judge is None:
            return gen
        judged = self.judge.cost(output_share)
        return None if gen is None or judged is None else gen + judged


@dataclass
class JudgePlan:
    """The judge's share of a run: at most one request per generated document (documents
    the filters reject first are never judged; scores already stored are not paid again)."""

    provider: str
    model: str
    requests: int
    input_tokens: int  # upper bound: the rubric plus each document at its max_tokens
    max_output_tokens: int
    price: ModelPrice | None

    def cost(self, output_share: float = 1.0) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(self.input_tokens, int(self.max_output_tokens * output_share))


@dataclass
class MostPlan:
    """The closed loop's ceiling: every cell sends ``max_samples`` samples, each with all its
    candidates, every sample is revised every round, and the judge reads every answer."""

    requests: int  # generation (candidates included)
    revisions: int
    input_tokens: int  # generation and revisions
    max_output_tokens: int
    judge: JudgePlan | None
    price: ModelPrice | None

    def cost(self, output_share: float = 1.0) -> float | None:
        if self.price is None:
            return None
        gen = self.price.cost(self.input_tokens, int(self.max_output_tokens * output_share))
        if self.judge is None:
            return gen
        judged = self.judge.cost(output_share)
        return None if judged is None else gen + judged


@dataclass
class GrowPlan:
    """What ``grow`` would send for the subjects without a topics file, at its defaults."""

    subjects: list[str]
    topics: int  # asked for at the first level
    requests: int
    cost: float | None


def _grow_plan(spec: Curriculum) -> GrowPlan | None:
    if not spec.to_grow:
        return None
    from textbook_gen.grow import (
        DEFAULT_TOPICS,
        GROW_MAX_TOKENS,
        grow_request,
        grow_requests_at_most,
    )

    renderer = PromptRenderer(spec)
    subjects = [s for s in spec.subjects if s.name in spec.to_grow]
    n = grow_requests_at_most(DEFAULT_TOPICS, 1) * len(subjects)
    tokens = sum(estimate_input_tokens(
        grow_request(spec, renderer, s, ("", ""), DEFAULT_TOPICS).messages) for s in subjects)
    price = spec_price(spec)
    cost = price.cost(tokens, GROW_MAX_TOKENS * n) if price is not None else None
    return GrowPlan(list(spec.to_grow), DEFAULT_TOPICS, n, cost)


REVISE_PROMPT_TOKENS = 350  # the bundled revise template around the draft and critique
PLAN_EXACT = 20_000  # jobs plan renders one by one; past this it estimates from a sample
PLAN_SAMPLE = 2_000  # renders behind an estimate
JUDGE_DOCUMENT_TOKENS = 3000  # about judge.MAX_EXTRACT_CHARS (12,000 characters) of text


@dataclass
class _Tally:
    """What a plan adds up over rendered jobs (all of them, or a sample)."""

    show: int
    jobs: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    kind_input: dict[str, int] = field(default_factory=dict)
    kind_output: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    judged_tokens: int = 0  # document tokens the judge reads, at most
    examples: list[tuple[Job, str]] = field(default_factory=list)
    seed_of: Callable[[Job], dict[str, str] | None] | None = None

    def add(self, job: Job, req: Request) -> None:
        self.jobs += 1
        self.by_kind[job.kind] = self.by_kind.get(job.kind, 0) + 1
        tokens = estimate_input_tokens(req.messages)
        self.kind_input[job.kind] = self.kind_input.get(job.kind, 0) + tokens
        self.kind_output[job.kind] = self.kind_output.get(job.kind, 0) + job.max_tokens
        self.input_tokens += tokens
        self.output_tokens += job.max_tokens
        self.judged_tokens += min(job.max_tokens, JUDGE_DOCUMENT_TOKENS)
        if len(self.examples) < self.show:
            text = "\n\n".join(f"[{r}]\n{c}" for r, c in req.messages)
            seed = self.seed_of(job) if self.seed_of is not None else None
            if seed is not None:
                text = f"[seed document] {seed['id']} ({seed['source']})\n\n{text}"
            self.examples.append((job, text))


def plan(spec: Curriculum, *, limit: int | None = None, show: int = 0,
         out_dir: Path | None = None) -> Plan:
    out_dir = out_dir or default_out_dir(spec)
    renderer = PromptRenderer(spec, seeds=open_seeds(spec, out_dir))
    store_path = out_dir / "run.sqlite"
    if job_count(spec, limit) > PLAN_EXACT:
        return _plan_estimate(spec, renderer, limit, show, store_path)
    store = RunStore(store_path) if store_path.exists() else None
    identity = store.job_identity if store is not None else NEW_IDENTITY
    t = _Tally(show, seed_of=renderer.seed_provenance)
    stored = 0
    spent = store.totals()["cost_usd"] if store is not None else 0.0  # None: unknown
    try:
        for job in jobs(spec, limit, identity):
            req = renderer.render(job)
            t.add(job, req)
            if store is not None:
                hit = store.get_response(req.key)
                stored += hit is not None and hit.status == "ok"
    finally:
        if store is not None:
            store.close()
    return Plan(t.jobs, t.by_kind, t.input_tokens, t.output_tokens, stored, spent,
                spec_price(spec), t.examples, _judge_plan(spec, t.jobs, t.judged_tokens),
                most=_most_plan(spec, t, 1.0), grow=_grow_plan(spec))


def _plan_estimate(spec: Curriculum, renderer: PromptRenderer, limit: int | None, show: int,
                   store_path: Path) -> Plan:
    """A plan for a spec too large to render job by job: render a seeded sample of its jobs
    (picked by index, without enumerating the rest) and scale; stored answers are counted
    from the store's job table."""
    import random

    from textbook_gen.expand import job_at

    total = job_count(spec, limit)
    t = _Tally(show, seed_of=renderer.seed_provenance)
    for i in sorted(random.Random(0).sample(range(total), min(PLAN_SAMPLE, total))):
        job = job_at(spec, i)
        t.add(job, renderer.render(job))
    scale = total / t.jobs
    stored, spent = 0, 0.0
    if store_path.exists():
        with RunStore(store_path) as store:
            stored = min(total, store.answered_jobs())
            spent = store.totals()["cost_usd"]
    kinds = {k: round(v * scale) for k, v in t.by_kind.items()}
    return Plan(total, kinds, round(t.input_tokens * scale), round(t.output_tokens * scale),
                stored, spent, spec_price(spec), t.examples,
                _judge_plan(spec, total, round(t.judged_tokens * scale)), sampled=t.jobs,
                most=_most_plan(spec, t, scale), grow=_grow_plan(spec))


def _most_plan(spec: Curriculum, t: _Tally, scale: float) -> MostPlan | None:
    """Scale the first pass's figures, kind by kind, to every cap of the loop reached."""
    revise = spec.curation.revise if spec.curation.enabled else None
    looping = [d for d in spec.documents if d.sample_cap > d.first_samples]
    if not looping and revise is None:
        return None
    judge_on = spec.curation.enabled and spec.curation.judge.enabled
    critique = spec.curation.judge.max_tokens if judge_on else 0
    requests = revisions = tokens_in = tokens_out = judged = 0
    for doc in spec.documents:
        n = t.by_kind.get(doc.kind, 0) * scale
        if not n:
            continue
        ratio = doc.sample_cap / doc.first_samples
        avg_in = t.kind_input[doc.kind] / t.by_kind[doc.kind]
        out = t.kind_output[doc.kind] / t.by_kind[doc.kind]
        gen = n * ratio
        revs = gen / doc.candidates * (revise.rounds if revise is not None else 0)
        requests += round(gen)
        revisions += round(revs)
        tokens_in += round(gen * avg_in + revs * (avg_in + out + critique + REVISE_PROMPT_TOKENS))
        tokens_out += round((gen + revs) * out)
        judged += round((gen + revs) * min(out, JUDGE_DOCUMENT_TOKENS))
    return MostPlan(requests, revisions, tokens_in, tokens_out,
                    _judge_plan(spec, requests + revisions, judged), spec_price(spec))


def _judge_plan(spec: Curriculum, documents: int, document_tokens: int) -> JudgePlan | None:
    if not (spec.curation.enabled and spec.curation.judge.enabled) or documents == 0:
        return None
    from textbook_gen.curate.judge import judge_model, judge_request

    model = judge_model(spec)
    rubric = estimate_input_tokens(judge_request({"text": ""}, model, 1).messages)
    max_tokens = spec.curation.judge.max_tokens
    return JudgePlan(model.provider, model.name, documents, rubric * documents + document_tokens,
                     max_tokens * documents,
                     price_for(model.provider, model.name, spec.prices))


# ----------------------------------------------------------------------------- run


@dataclass
class RunResult:
    out_dir: Path
    stats: GenerationStats
    records: int
    rejected: int
    failed: list[tuple[str, str, str]]
    manifest: dict[str, Any]
    ledger: Ledger


def check_provider(spec: Curriculum, *, keys: bool = True) -> type[Provider]:
    """Fail before any work if the provider cannot run (missing key, package or model file,
    or a --max-cost with no price); ``keys`` false leaves the API key to the run."""
    cls = provider_class(spec.model.provider)
    check = getattr(cls, "check_key", None)
    if check is not None and keys:
        check(spec.model)
    if spec.engine.max_cost_usd is not None and spec_price(spec) is None:
        raise ConfigError(
            f"--max-cost needs a price for model {spec.model.name!r}, which the built-in table"
            f" lacks; add one to the spec:\n  prices:\n    {spec.model.name}:"
            " {input: 0.15, output: 0.60}   # USD per million tokens"
        )
    return cls


def make_providers(spec: Curriculum) -> list[Provider]:
    cls = check_provider(spec)
    urls: list[str | None] = list(spec.model.base_url) or [None]
    per_client = cls.connections_per_client
    copies = -(-spec.engine.concurrency // (per_client * len(urls))) if per_client else 1
    return [
        cls(spec.model, timeout=spec.engine.timeout, base_url=u)  # type: ignore[call-arg]
        for u in urls
        for _ in range(copies)
    ]


def run_ledger(spec: Curriculum, store: RunStore) -> Ledger:
    """The run's one budget. The caps are the run directory's: what earlier invocations
    spent on it (stored with their answers and failures) counts against them."""
    totals = store.totals()
    return Ledger(spec.engine.max_cost_usd, spec.engine.max_total_tokens,
                  earlier_usd=totals["cost_usd"] or 0.0,
                  earlier_tokens=totals["input_tokens"] + totals["output_tokens"])


# a side stage (the judge) whose first this many requests all fail stops the run
SIDE_STAGE_GIVE_UP = 3


def send_side_stage(spec: Curriculum, store: RunStore, ledger: Ledger, items: list[WorkItem],
                    progress: Progress, stage: str, doing: str) -> None:
    """Send a side stage's requests (judge, grow) to ``spec``'s model through the engine, the
    run store and the ledger; a budget stop or Ctrl-C raises, saying that what arrived is
    stored. A stage whose first requests all fail stops the run (``FatalProviderError``)
    instead of failing every document one by one."""
    from textbook_gen.engine import Engine

    engine = Engine(make_providers(spec), store, spec.engine, spec_price(spec), ledger=ledger,
                    stage=stage, give_up_after=SIDE_STAGE_GIVE_UP,
                    on_notice=progress.message)
    stats = drive(engine, iter(items), len(items), progress, stage)
    if stats.stop_reason == "budget":
        raise ledger.exceeded(stats.done, stats.total)
    if stats.stop_reason == "interrupted":
        raise Interrupted(f"stopped while {doing}; every answer received is stored. Run the"
                          " same command again to continue.")


def check_paid_stages(spec: Curriculum, batch: bool = False, *, keys: bool = True) -> None:
    """Everything that can refuse the run does so before anything is paid (``validate``
    asks the same, ``keys`` false: the API key belongs to the machine that runs it)."""
    if batch and not provider_class(spec.model.provider).supports_batch:
        raise ConfigError(f"the {spec.model.provider} provider has no batch API; run without"
                          " --batch")
    check_provider(spec, keys=keys)
    if spec.curation.enabled and spec.curation.judge.enabled:
        from textbook_gen.curate.judge import cannot_judge, judge_model

        judge = judge_model(spec)
        why = cannot_judge(judge.provider, judge.name)
        if why:
            raise ConfigError(f"{spec.where('curation', 'judge')}: curation.judge: {why}."
                              " Set curation.judge.provider and model to a stronger model"
                              " (e.g. openai gpt-4o-mini), or turn the judge off")
        check_provider(spec.model_copy(update={"model": judge}), keys=keys)
    if spec.curation.enabled and spec.curation.verify_code:
        from textbook_gen.curate.sandbox import sandbox_for

        sandbox_for(spec.curation.verify)  # ConfigError (exit 2): no sandbox, nothing paid yet


def _check_run_dir(out_dir: Path) -> None:
    """Refuse a run directory that cannot hold a run, or whose store was lost while its
    outputs remain (running would pay again for every request without a word)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a directory; give a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out_dir}: cannot create it ({e.strerror or e}); give a"
                          " directory you can write") from None
    store = out_dir / "run.sqlite"
    lost = not store.exists() or store.stat().st_size == 0
    if lost and (out_dir / "manifest.json").exists():
        what = "is empty" if store.exists() else "is missing"
        raise ConfigError(
            f"{store} {what}, but {out_dir} holds the outputs of an earlier run: its paid answers"
            " are not there to reuse, so running would pay again for every request. Restore"
            " run.sqlite from a backup, or start over with another --out (or delete"
            f" {out_dir})")


def make_generator(spec: Curriculum, store: RunStore, ledger: Ledger, *, batch: bool,
                   retry_base_delay: float, rate_window: float, poll_interval: float,
                   on_alarm: Callable[[Alarm], None] | None = None,
                   stage: str = "generate", limit_share: int = 1,
                   on_notice: Callable[[str], None] | None = None) -> Generator:
    """The generator of one step; ``limit_share``: how many engines (Ray workers) send on the
    account, each taking its part of the rate limits the server reports."""
    if batch:
        from textbook_gen.batch import BatchRunner, backend_for

        return BatchRunner(backend_for(make_providers(spec)[0]), store, spec_price(spec),
                           ledger=ledger, poll_interval=poll_interval, stage=stage)
    from textbook_gen.engine import Engine

    watch = Watch(spec.watch) if spec.watch.enabled and stage == "generate" else None
    return Engine(make_providers(spec), store, spec.engine, spec_price(spec), ledger=ledger,
                  retry_base_delay=retry_base_delay, rate_window=rate_window, watch=watch,
                  on_alarm=on_alarm, stage=stage, limit_share=limit_share, on_notice=on_notice)


def run_curriculum(
    spec: Curriculum,
    *,
    out_dir: Path | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    retry_base_delay: float = 1.0,
    rate_window: float = 60.0,
    batch: bool = False,
    poll_interval: float = 30.0,
    workers: int | None = None,
    ray: str | None = None,
) -> RunResult:
    """Generate what is not stored, curate, and go round the closed loop (``loop.py``) until
    nothing is left to send; then write the outputs. Jobs that failed are in
    ``RunResult.failed`` (the CLI exits 5 for them); errors that are not a job's own raise.
    When the budget runs out the outputs are written from what is stored, then
    ``BudgetExceeded`` is raised. With ``ray`` (an address, ``auto`` or ``local``) the
    generation of each step is spread over ``workers`` Ray actors (distributed_run.py);
    curation and the judge stay here."""
    from textbook_gen.loop import Loop

    progress = progress or Progress()
    out_dir = Path(out_dir or default_out_dir(spec))
    problems = spec_problems(spec)
    if problems:
        raise SpecError(problems)
    check_paid_stages(spec, batch)
    _check_run_dir(out_dir)
    renderer = PromptRenderer(spec, seeds=open_seeds(spec, out_dir, progress))
    with RunStore(out_dir / "run.sqlite", exclusive=True) as store:
        if store.replayed:
            progress.message(f"loaded {store.replayed} paid answer(s) an earlier run had saved"
                             " beside the store")
        ledger = run_ledger(spec, store)
        alarms: list[Alarm] = []

        def notice(message: str) -> None:
            progress.message(message)
            with open(out_dir / "run.log", "a", encoding="utf-8") as log:
                log.write(f"{dt.datetime.now(dt.UTC).isoformat()} {message}\n")

        def on_alarm(alarm: Alarm) -> None:
            alarms.append(alarm)
            notice(alarm.message())

        cluster: list[Any] = []  # the Ray actors, started by the first step that sends

        def generate(items: Iterator[WorkItem], count: int, label: str,
                     stage: str) -> GenerationStats:
            if ray is not None:
                if not cluster:
                    from textbook_gen.distributed_run import RayGeneration

                    cluster.append(RayGeneration(spec, store, ray, workers, retry_base_delay,
                                                 rate_window, on_alarm))
                return cluster[0].generate(items, count, label, stage, ledger, progress)
            generator = make_generator(spec, store, ledger, batch=batch,
                                       retry_base_delay=retry_base_delay,
                                       rate_window=rate_window, poll_interval=poll_interval,
                                       on_alarm=on_alarm, stage=stage, on_notice=notice)
            return drive(generator, items, count, progress, label)

        loop = Loop(spec, renderer, store, limit)
        run_id = store.start_run()
        try:
            return _rounds(spec, store, out_dir, renderer, loop, run_id, ledger, progress,
                           alarms, generate, workers)
        except BaseException as e:
            # a run that ended on an error says so (one the rounds did not record already)
            with contextlib.suppress(Exception):
                store.finish_run(run_id, f"error: {type(e).__name__}", sent=0, cached=0,
                                 failed=0, cost_usd=ledger.run_usd, only_running=True)
            raise
        finally:
            if cluster:
                cluster[0].close()


def _rounds(spec: Curriculum, store: RunStore, out_dir: Path, renderer: PromptRenderer,
            loop: Any, run_id: int, ledger: Ledger, progress: Progress, alarms: list[Alarm],
            generate: Callable[..., GenerationStats], workers: int | None) -> RunResult:
    """The closed loop's rounds: send, curate, decide what is left; then the outputs."""
    from textbook_gen.outputs import commit_outputs, curate_stored

    total = GenerationStats()
    stop: str | None = None
    final = None
    while final is None:
        samples, n_samples, revisions, n_revisions = loop.work()
        rnd = loop.round.number
        for items, count, label, stage in (
                (samples, n_samples, "generate" if rnd == 1 else f"generate · round {rnd}",
                 "generate"),
                (revisions, n_revisions, f"revise · round {rnd}", "revise")):
            if count == 0:
                continue
            s = generate(items, count, label, stage)
            total.add(s)
            if s.stop_reason is not None:
                stop = s.stop_reason
                break
        if stop is not None and stop != "budget":
            store.finish_run(run_id, stop, sent=total.sent, cached=total.cached,
                             failed=total.failed, cost_usd=ledger.run_usd)
            _raise_stopped(stop, alarms, out_dir, store, total)
        if stop == "budget":
            break
        try:
            build, result = curate_stored(spec, store, out_dir, loop.records(),
                                          ledger=ledger, progress=progress,
                                          loop=loop.curation(), renderer=renderer,
                                          workers=workers)
        except BudgetExceeded:
            stop = "budget"
            break
        if loop.advance(result).empty:
            final = build, result
        else:
            build.sweep()  # this round's build: the next round curates again
            progress.message(f"round {rnd}: {_round_line(loop, result)}")
    if final is None:  # the budget ran out: curate what is stored, paying nothing more
        final = curate_stored(spec, store, out_dir, loop.records(), ledger=ledger,
                              progress=progress, loop=loop.curation(), pay=False,
                              renderer=renderer, workers=workers)
    build, result = final
    failed = loop.job_failures() + result.failed
    store.finish_run(run_id, stop or "complete", sent=total.sent, cached=total.cached,
                     failed=total.failed, cost_usd=ledger.run_usd)
    manifest = commit_outputs(spec, renderer, store, build, result, jobs=total.total,
                              failed=len(failed), ledger=ledger,
                              coverage=loop.coverage(result, stop))
    if stop == "budget":
        raise ledger.exceeded(total.done, total.total, written=out_dir)
    kept = sum(x.records for x in result.shards)
    rejected = sum(x.records for x in result.rejects)
    return RunResult(out_dir, total, kept, rejected, failed, manifest, ledger)


def _round_line(loop: Any, result: Any) -> str:
    r = loop.round
    samples = sum((b - a) * c.candidates for c, a, b in r.samples)
    kept = sum(x.records for x in result.shards)
    return (f"{kept:,} kept so far; next: {samples:,} new answer(s) for cells under target,"
            f" {len(r.revisions):,} revision(s)")


def _raise_stopped(stop: str, alarms: list[Alarm], out_dir: Path, store: RunStore,
                   s: GenerationStats) -> None:
    if stop == "collapse":
        raise CollapseStopped(
            f"{alarms[-1].message()}. Stopped (--stop-on-collapse): every answer received is"
            f" stored and {out_dir / 'run.log'} has the warnings. Change the templates or"
            " axes, then run again (only changed prompts are re-sent), or run without"
            " --stop-on-collapse to continue as it is")
    raise Interrupted(
        f"stopped: {s.done}/{s.total} jobs done, every answer received is stored in"
        f" {store.path}. Run the same command again to continue where it stopped.")
