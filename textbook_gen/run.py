"""One curriculum, end to end: spec -> jobs -> requests -> engine -> records -> curation -> shards.

The CLI calls ``plan`` and ``run_curriculum``; both are plain functions over a validated
``Curriculum`` so tests and other programs can call them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textbook_gen import __version__
from textbook_gen.batch import BatchRunner, backend_for
from textbook_gen.engine import Engine, EngineStats, WorkItem, budget_message
from textbook_gen.errors import ConfigError, Interrupted, TextbookGenError
from textbook_gen.expand import Job, count_jobs, jobs
from textbook_gen.prompts import PromptRenderer
from textbook_gen.providers import Provider, Request, provider_class
from textbook_gen.records import iter_records
from textbook_gen.shards import write_manifest
from textbook_gen.spec import Curriculum
from textbook_gen.store import RunStore
from textbook_gen.tokens import ModelPrice, estimate_input_tokens, price_for


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
    new = Curriculum.model_validate(data)
    new._source, new._sha256 = spec._source, spec._sha256
    return new


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
    spent_usd: float  # what the stored answers cost
    price: ModelPrice | None
    examples: list[tuple[Job, str]]  # (job, rendered prompt) for --show

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


def plan(spec: Curriculum, *, limit: int | None = None, show: int = 0,
         out_dir: Path | None = None) -> Plan:
    renderer = PromptRenderer(spec)
    store_path = (out_dir or default_out_dir(spec)) / "run.sqlite"
    store = RunStore(store_path) if store_path.exists() else None
    by_kind: dict[str, int] = {}
    examples: list[tuple[Job, str]] = []
    n = inp = out = stored = 0
    spent = store.totals()["cost_usd"] if store is not None else 0.0
    try:
        for job in jobs(spec, limit):
            req = renderer.render(job)
            n += 1
            by_kind[job.kind] = by_kind.get(job.kind, 0) + 1
            inp += estimate_input_tokens(req.messages)
            out += job.max_tokens
            if store is not None:
                hit = store.get_response(req.key)
                stored += hit is not None and hit.status == "ok"
            if len(examples) < show:
                examples.append((job, "\n\n".join(f"[{r}]\n{c}" for r, c in req.messages)))
    finally:
        if store is not None:
            store.close()
    return Plan(n, by_kind, inp, out, stored, spent, spec_price(spec), examples)


# ----------------------------------------------------------------------------- run


class Progress:
    """What a run reports as it goes; the CLI draws it with rich, tests use this silent one."""

    def generation(self, stats: EngineStats,
                   label: str = "generate") -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def stage(self, name: str, done: int, total: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass
class RunResult:
    out_dir: Path
    stats: EngineStats
    records: int
    rejected: int
    failed: list[tuple[str, str, str]]
    manifest: dict[str, Any]


def check_provider(spec: Curriculum) -> type[Provider]:
    """Fail before any work if the provider cannot run (missing key, package or model file)."""
    cls = provider_class(spec.model.provider)
    check = getattr(cls, "check_key", None)
    if check is not None:
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
) -> RunResult:
    progress = progress or Progress()
    out_dir = Path(out_dir or default_out_dir(spec))
    renderer = PromptRenderer(spec)
    problems = renderer.check()
    if problems:
        raise TextbookGenError("\n".join(problems))
    providers = make_providers(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    with RunStore(out_dir / "run.sqlite") as store:
        engine: Engine | BatchRunner
        if batch:
            engine = BatchRunner(backend_for(providers[0]), store, spec_price(spec),
                                 poll_interval=poll_interval,
                                 max_cost_usd=spec.engine.max_cost_usd)
        else:
            engine = Engine(providers, store, spec.engine, spec_price(spec),
                            retry_base_delay=retry_base_delay, rate_window=rate_window)
        total = job_count(spec, limit)
        items = (WorkItem(j.id, renderer.render(j)) for j in jobs(spec, limit))
        run_id = store.start_run()
        stats = _drive(engine, items, total, progress)
        s = stats
        status = s.stop_reason or "complete"
        store.finish_run(run_id, status, sent=s.sent, cached=s.cached, failed=s.failed,
                         cost_usd=s.cost_usd)
        if s.stop_reason == "budget":
            raise budget_message(s, spec.engine)
        if s.stop_reason == "interrupted":
            raise Interrupted(
                f"stopped: {s.done}/{s.total} jobs done, every answer received is stored in"
                f" {store.path}. Run the same command again to continue where it stopped."
            )
        failed = list(store.failures())
        manifest, kept, rejected = write_outputs(spec, renderer, store, out_dir, limit, progress)
    return RunResult(out_dir, stats, kept, rejected, failed, manifest)


def _drive(engine: Engine | BatchRunner, items: Iterator[WorkItem], total: int,
           progress: Progress, label: str = "generate") -> EngineStats:
    async def main() -> EngineStats:
        loop = asyncio.get_running_loop()
        presses = 0

        def on_sigint() -> None:
            nonlocal presses
            presses += 1
            if presses == 1:
                progress.message("Stopping: no new requests; waiting for those in flight "
                                 "(press Ctrl-C again to stop at once)")
                engine.request_stop()
            else:
                engine.abort()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            engine.stats.total = total  # the display reads it before the engine starts
            with progress.generation(engine.stats, label):
                return await engine.run(items, total)
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
            await engine.aclose()

    return asyncio.run(main())


# ----------------------------------------------------------------------------- outputs


def make_judge(spec: Curriculum, store: RunStore,
               progress: Progress) -> Callable[[list[dict[str, Any]]], dict[str, float | None]]:
    """The LLM judge as curation calls it: scores through the same engine and store as the
    generation (cached, resumable, counted in cost), with the judge's own model if set."""
    from textbook_gen.curate.judge import judge_prompt, parse_judge_score

    settings = spec.curation.judge
    model = spec.model
    provider_name = settings.provider or model.provider
    model_name = settings.model or model.name
    if provider_name != model.provider or model_name != model.name:
        model = model.model_copy(update={"provider": provider_name, "name": model_name})
    judge_spec = spec.model_copy(update={"model": model})
    max_tokens = settings.max_tokens

    def judge(records: list[dict[str, Any]]) -> dict[str, float | None]:
        items = [
            WorkItem(f"judge:{r['id']}", Request.build(
                provider_name, model_name, [("user", judge_prompt(r))],
                {"max_tokens": max_tokens, "temperature": 0.0, "seed": 0}))
            for r in records
        ]
        engine = Engine(make_providers(judge_spec), store, spec.engine, spec_price(judge_spec))
        stats = _drive(engine, iter(items), len(items), progress, "judge")
        if stats.stop_reason == "budget":
            raise budget_message(stats, spec.engine)
        if stats.stop_reason == "interrupted":
            raise Interrupted("stopped while judging; every score received is stored. Run the"
                              " same command again to continue.")
        scores: dict[str, float | None] = {}
        for r, item in zip(records, items, strict=True):
            stored = store.get_response(item.request.key)
            ok = stored is not None and stored.status == "ok"
            scores[r["id"]] = parse_judge_score(stored.text or "") if ok else None  # type: ignore[union-attr]
        return scores

    return judge


def write_outputs(spec: Curriculum, renderer: PromptRenderer, store: RunStore, out_dir: Path,
                  limit: int | None, progress: Progress) -> tuple[dict[str, Any], int, int]:
    """Curate the stored answers and write shards, rejects and the manifest.

    Everything here is rebuilt from the store, so old outputs are removed first: a crash
    here loses no paid work, and a rerun writes them again.
    """
    (out_dir / "manifest.json").unlink(missing_ok=True)
    for sub in ("shards", "rejects"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    records = iter_records(spec, renderer, store, limit)
    fmt, per_shard = spec.output.format, spec.output.shard_max_records
    from textbook_gen.curate.pipeline import curate

    # benchmark files are relative to the spec; with enabled: false curate() keeps everything
    settings = spec.curation.resolve_paths(spec.source_path.parent)
    judge = (make_judge(spec, store, progress)
             if settings.enabled and settings.judge.enabled else None)
    result = curate(records, settings, out_dir, fmt=fmt, shard_max_records=per_shard,
                    judge=judge, progress=progress.stage)
    shards = [*result.shards, *result.rejects]
    kept = sum(s.records for s in result.shards)
    rejected = sum(s.records for s in result.rejects)
    curation = result.to_manifest()
    totals = store.totals()
    manifest = {
        "name": spec.name,
        "tool": f"textbook-gen {__version__}",
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "spec": {"path": str(spec.source_path), "sha256": spec.sha256},
        "templates": renderer.template_hashes(),
        "model": {"provider": spec.model.provider, "name": spec.model.name},
        "format": fmt,
        "counts": {"jobs": job_count(spec, limit), "records": kept, "rejected": rejected,
                   "failed": totals["failed"]},
        "usage": {"input_tokens": totals["input_tokens"],
                  "output_tokens": totals["output_tokens"], "cost_usd": totals["cost_usd"]},
        "curation": curation,
        "shards": [s.to_dict() for s in shards],
    }
    write_manifest(out_dir, manifest)
    return manifest, kept, rejected
