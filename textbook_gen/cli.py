"""The command line: parses options, calls the modules, and is the one place errors become exits.

Every ``TextbookGenError`` is printed as one message on stderr with its exit code; set
``TEXTBOOK_GEN_DEBUG=1`` or pass ``--debug`` to see the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from textbook_gen import __version__
from textbook_gen.errors import ConfigError, SpecError, TextbookGenError
from textbook_gen.helpformat import App

app = App(
    name="textbook-gen",
    help="Turn a YAML curriculum into a curated synthetic textbook corpus for training LMs.\n\n"
    "Typical flow: validate -> plan (see requests and cost) -> run -> cat.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)
_debug = {"on": bool(os.environ.get("TEXTBOOK_GEN_DEBUG"))}

SpecArg = Annotated[Path, typer.Argument(help="Curriculum YAML file.", show_default=False)]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", metavar="DIR", show_default="out/<name>",
                              help="Run directory.")
]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", "-n", help="Only the first N jobs (to try a spec).")
]


def _version(value: bool) -> None:
    if value:
        out.print(f"textbook-gen {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    if debug:
        _debug["on"] = True


def _load(path: Path, *, to_grow: bool = False):  # noqa: ANN202 - Curriculum, imported lazily
    from textbook_gen.spec import load_curriculum

    return load_curriculum(path, to_grow=to_grow)


WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", "-w", metavar="N", help="Processes for the per-document curation stages "
    "(token counts, filters, decontamination, dedup signatures); default: every core. The "
    "result does not depend on it.")]


def _at_least(option: str, value: float | None, minimum: float) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"{option}: must be at least {minimum:g} (got {value:g})")


def _fail(e: TextbookGenError) -> typer.Exit:
    if isinstance(e, SpecError):
        for line in e.problems:
            err.print(line, markup=False, highlight=False)
        n = len(e.problems)
        err.print(f"[red]{n} problem{'s' * (n != 1)} found.[/]")
    else:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
    return typer.Exit(e.exit_code)


def _warn_spec(spec: Any) -> None:
    """A spec is trusted like code: say what it reaches beyond its folder."""
    from textbook_gen.checks import spec_warnings

    for w in spec_warnings(spec):
        err.print(f"[yellow]warning[/] {escape(w)}", highlight=False)


@app.command()
def validate(spec: SpecArg) -> None:
    """Check a curriculum: every problem at once, with file, line and key."""
    from textbook_gen.checks import spec_problems
    from textbook_gen.run import job_count

    s = _load(spec)
    problems = spec_problems(s)
    if problems:
        raise SpecError(problems)
    from textbook_gen.run import check_paid_stages

    check_paid_stages(s, keys=False)  # what run refuses before paying, validate refuses too
    _warn_spec(s)
    try:  # the key belongs to the machine that runs it: said, not refused
        check_paid_stages(s)
    except ConfigError as e:
        err.print(f"[yellow]note[/] run will need: {escape(str(e))}", highlight=False)
    from textbook_gen.expand import distinct_job_count
    from textbook_gen.prompts import CHECK_RENDERS

    combos = distinct_job_count(s)
    rendered = (f"every template rendered for all {combos:,} combinations of its variables"
                if combos <= CHECK_RENDERS else
                f"templates rendered for a seeded sample of ~{CHECK_RENDERS:,} of {combos:,}"
                " combinations of their variables")
    out.print(f"[green]ok[/] {spec}: {s.name}, {job_count(s):,} jobs "
              f"({len(s.subjects)} subjects, {sum(len(x.topics) for x in s.subjects)} topics, "
              f"{len(s.documents)} document kinds); {rendered}")


@app.command()
def plan(
    spec: SpecArg,
    show: Annotated[int, typer.Option(help="Print the first N rendered prompts.")] = 0,
    limit: LimitOpt = None,
    out_dir: OutOpt = None,
    provider: Annotated[str | None, typer.Option(help="Override model.provider.")] = None,
    model: Annotated[str | None, typer.Option(help="Override model.name.")] = None,
) -> None:
    """Show what a run would send and cost, before anything is spent."""
    _at_least("--limit", limit, 1)
    _at_least("--show", show, 0)
    from textbook_gen.ledger import money
    from textbook_gen.run import Overrides, apply_overrides
    from textbook_gen.run import plan as make_plan

    s = apply_overrides(_load(spec, to_grow=True), Overrides(provider=provider, model=model))
    p = make_plan(s, limit=limit, show=show, out_dir=out_dir)
    for job, prompt in p.examples:
        out.rule(f"[bold]{job.id}")
        out.print(prompt, markup=False, highlight=False)
    title = f"plan: {s.name} on {s.model.provider}/{s.model.name}"
    if p.sampled:
        title += f" (estimated from {p.sampled:,} sampled jobs)"
    t = Table(title=title, show_header=False)
    t.add_row("jobs", f"{p.jobs:,}  ({', '.join(f'{k}: {v:,}' for k, v in p.by_kind.items())})")
    t.add_row("already stored", f"{p.stored:,}  (not sent again; they cost {money(p.spent_usd)})")
    t.add_row("requests to send", f"{p.to_send:,}")
    t.add_row("input tokens (est.)", f"{p.input_tokens:,}")
    t.add_row("output tokens (max)", f"{p.max_output_tokens:,}")
    if p.judge is not None:
        j = p.judge
        t.add_row("judge requests (max)", f"{j.requests:,}  on {j.provider}/{j.model}, at most"
                  f" {j.input_tokens:,} input and {j.max_output_tokens:,} output tokens")
        t.add_row("judge cost (max)", money(j.cost(1.0)))
    if p.most is None:
        t.add_row("cost to finish if outputs use max_tokens", money(p.total_cost(1.0)))
        t.add_row("cost if outputs use half", money(p.total_cost(0.5)))
    else:
        m = p.most
        t.add_row("closed loop (at most)", f"{m.requests:,} generation requests,"
                  f" {m.revisions:,} revisions, {m.judge.requests if m.judge else 0:,} judge"
                  " requests, if every cell reaches every cap")
        t.add_row("cost if outputs use max_tokens", f"{money(p.total_cost(1.0))} (one pass) .."
                  f" {money(m.cost(1.0))} (every cap reached)")
        t.add_row("cost if outputs use half", f"{money(p.total_cost(0.5))} (one pass) .."
                  f" {money(m.cost(0.5))} (every cap reached)")
    why = _judge_warning(s)
    if why:
        t.add_row("[red]judge", why)
    if p.grow is not None:
        g = p.grow
        t.add_row("[yellow]grow first", f"{', '.join(g.subjects)}: no topics file yet; run"
                  f" `textbook-gen grow {spec}` (at most {g.requests:,} requests at"
                  f" {g.topics} topics, depth 1: {money(g.cost)}). The figures above count"
                  " one stand-in topic for each")
    if p.price is not None and p.price.input:
        t.add_row("generation with batch API (max)", money((p.cost(1.0) or 0) / 2))
    out.print(t)


def _judge_warning(s: Any) -> str | None:
    if not (s.curation.enabled and s.curation.judge.enabled):
        return None
    from textbook_gen.curate.judge import cannot_judge, judge_model

    m = judge_model(s)
    why = cannot_judge(m.provider, m.name)
    return (f"{why}. `run` refuses it: set curation.judge.model (and provider) to a stronger"
            " model, or turn the judge off") if why else None


GROW_TOPICS = 12  # grow.DEFAULT_TOPICS, which plan prices (not imported: the CLI imports lazily)


@app.command("export")
def export_(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (or curate outputs) to"
                                               " export, mixed with --weights.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DIR",
                                          help="A new folder for the export.")],
    fmt: Annotated[str, typer.Option("--format", "-f", metavar="FORMAT",
                                     help="datatrove, megatron, llmc, olmo (raw tokens"
                                     " for memmap readers), npy (a NumPy array), or hf (Parquet"
                                     " splits and a dataset card); docs/export.md.")] = "hf",
    tokenizer: Annotated[str | None, typer.Option(
        metavar="TOKENIZER", help="A Hugging Face tokenizer.json, or tiktoken:cl100k_base"
        " (bundled offline).")] = None,
    eos: Annotated[str | None, typer.Option(metavar="TOKEN", help="The end-of-text token"
                                            " written after each document (default: the"
                                            " tokenizer's own).")] = None,
    no_eos: Annotated[bool, typer.Option("--no-eos", help="No token between documents.")]
        = False,
    kinds: Annotated[list[str] | None, typer.Option("--kind", metavar="KIND",
                                                    help="Only this kind (repeat).")] = None,
    min_score: Annotated[float | None, typer.Option(metavar="N",
                                                    help="Only judge scores of N or more.")]
        = None,
    verified_only: Annotated[bool, typer.Option("--verified-only",
                                                help="Only documents whose exercises passed.")]
        = False,
    validation: Annotated[float, typer.Option(metavar="FRACTION", help="Share of documents"
                                              " in a validation split (by a hash of the id).")]
        = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the shuffle, the split and the mix.")] = 0,
    no_shuffle: Annotated[bool, typer.Option("--no-shuffle", help="Keep the corpus's order.")]
        = False,
    weights: Annotated[str | None, typer.Option(metavar="W1,W2,...", help="Mixing weights, one"
                                                " per run: each run's share of the documents.")]
        = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it holds an export.")] = False,
) -> None:
    """Write a corpus as a training job reads it: tokenized shards (datatrove, megatron, llmc,
    olmo, npy) or a Hugging Face datasets folder with a dataset card. Streams; memory does not grow
    with the corpus's text."""
    from textbook_gen.export import Selection, export

    w = None
    if weights:
        try:
            w = [float(x) for x in weights.split(",")]
        except ValueError:
            raise ConfigError(f"--weights {weights!r}: comma-separated numbers, e.g. 0.7,0.3"
                              ) from None
    result = export(runs, out_dir, fmt=fmt, tokenizer=tokenizer, eos=eos, add_eos=not no_eos,
                    selection=Selection(tuple(kinds or ()), min_score, verified_only,
                                        validation, seed),
                    shuffle=not no_shuffle, weights=w, force=force)
    for name, sp in result.manifest["splits"].items():
        tokens = f", {sp['tokens']:,} tokens" if sp["tokens"] is not None else ""
        err.print(f"[green]exported[/] {name}: {sp['documents']:,} documents{tokens},"
                  f" {len(sp['files'])} file(s)", highlight=False)
    if result.manifest["token_files"]:
        err.print(f"read by: {result.manifest['token_files']['read_by']}", highlight=False)
    out.print(str(result.out))


@app.command()
def grow(
    spec: SpecArg,
    subject: Annotated[list[str] | None, typer.Option(
        "--subject", metavar="NAME", help="The subject to grow (repeat for more); default:"
        " every subject whose include file does not exist yet.")] = None,
    topics: Annotated[int, typer.Option(help="Topics to ask for at the first level.")] =
        GROW_TOPICS,
    depth: Annotated[int, typer.Option(help="Levels: 1 topics, 2 topics and their subtopics"
                                       " (4 each), ...")] = 1,
    out_dir: OutOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Write over an existing topics file"
                                        " (its paid answers are reused).")] = False,
    provider: Annotated[str | None, typer.Option(help="Override model.provider.")] = None,
    model: Annotated[str | None, typer.Option(help="Override model.name.")] = None,
    base_url: Annotated[list[str] | None, typer.Option(
        metavar="URL", help="OpenAI-compatible endpoint.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Have the model propose a subject's topics, with key concepts, into a YAML file the spec
    includes (the subject's include: key). Review and edit it, then plan and run. Paid calls
    go through the run store and budget: a rerun sends nothing again."""
    _at_least("--topics", topics, 1)
    _at_least("--depth", depth, 1)
    if depth > 3:
        raise ConfigError("--depth: at most 3 (each level multiplies the requests)")
    from textbook_gen.grow import run_grow
    from textbook_gen.run import Overrides, apply_overrides, default_out_dir
    from textbook_gen.ui import make_progress

    s = apply_overrides(_load(spec, to_grow=True), Overrides(
        provider=provider, model=model, base_url=base_url or []))
    names = subject or s.to_grow
    if not names:
        raise ConfigError(f"{spec}: every subject has its topics (include files written"
                          " before are kept: they may hold your edits); to grow one again,"
                          " name it: --subject NAME --force (answers already paid for are"
                          " reused)")
    by_name = {x.name: x for x in s.subjects}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"--subject {unknown[0]!r}: not a subject of {spec}; it has"
                          f" {', '.join(repr(n) for n in by_name)}")
    progress = make_progress(err, quiet=quiet)
    written = run_grow(s, [by_name[n] for n in names], topics=topics, depth=depth,
                       out_dir=Path(out_dir or default_out_dir(s)), progress=progress,
                       force=force)
    for (path, count), name in zip(written, names, strict=True):
        hint = "" if by_name[name].include else (
            f"; add `include: {path.name}` to subject {name!r} in {spec}")
        err.print(f"[green]grew[/] {name}: {count} topics -> {escape(str(path))}{hint}",
                  highlight=False)
        out.print(str(path))


@app.command()
def run(
    spec: SpecArg,
    out_dir: OutOpt = None,
    limit: LimitOpt = None,
    provider: Annotated[str | None, typer.Option(help="Override model.provider "
                                                 "(local, openai, anthropic).")] = None,
    model: Annotated[str | None, typer.Option(help="Override model.name.")] = None,
    base_url: Annotated[list[str] | None, typer.Option(
        metavar="URL",
        help="OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama); repeat for replicas."
    )] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-j",
                                                    help="Requests in flight.")] = None,
    max_cost: Annotated[float | None, typer.Option(
        metavar="USD", help="Stop before a request that could push this run's spend over USD.")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        help="Stop before a request that could push this run's tokens over N.")] = None,
    batch: Annotated[bool, typer.Option(
        help="Use the provider's batch API (OpenAI Batch, Anthropic Message Batches): half the "
        "price, results within 24 h. Safe to stop and rerun: batches are never submitted twice."
    )] = False,
    poll_interval: Annotated[float, typer.Option(metavar="SECONDS",
                                                 help="Seconds between batch status checks.")
                             ] = 30.0,
    stop_on_collapse: Annotated[bool, typer.Option(
        "--stop-on-collapse", help="Stop (resumably, exit 6) when the collapse watch sees one "
        "opening or near-duplicates take over recent answers.")] = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", "-w", metavar="N", help="Processes for the per-document curation stages "
        "(default: every core); with --ray, the Ray workers that generate (default: the "
        "cluster's CPUs). The result does not depend on it.")] = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="ADDRESS", help="Generate on a Ray cluster: its address (host:port "
        "or ray://host:port), auto (the cluster `ray start` started here), or local (a "
        "throwaway cluster on this machine). Jobs are split by a hash of their request; each "
        "worker has its own engine, store partition and share of the rate limits and budget. "
        "Needs the ray extra.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Generate the corpus: send what is not stored yet, curate, write shards. Resumable."""
    _at_least("--limit", limit, 1)
    _at_least("--workers", workers, 1)
    from textbook_gen.distributed_run import check_ray_options

    check_ray_options(batch, ray)
    _at_least("--poll-interval", poll_interval, 0)
    from textbook_gen.ledger import money
    from textbook_gen.run import Overrides, apply_overrides, run_curriculum
    from textbook_gen.ui import make_progress

    s = apply_overrides(_load(spec), Overrides(
        provider=provider, model=model, base_url=base_url or [], concurrency=concurrency,
        max_cost_usd=max_cost, max_total_tokens=max_tokens,
        stop_on_collapse=True if stop_on_collapse else None))
    _warn_spec(s)
    if s.curation.enabled and s.curation.verify_code:
        _show_sandbox(s.curation.verify)
    progress = make_progress(err, quiet=quiet)
    delay = float(os.environ.get("TEXTBOOK_GEN_RETRY_BASE_DELAY", "1.0"))
    try:
        result = run_curriculum(s, out_dir=out_dir, limit=limit, progress=progress,
                                retry_base_delay=delay, batch=batch, poll_interval=poll_interval,
                                workers=workers, ray=ray)
    finally:
        progress.close()
    _summary(result, money)
    out.print(str(result.out_dir))
    if result.failed:
        for job_id, kind, message in result.failed[:10]:
            err.print(f"  {job_id}: {kind}: {message}", markup=False, highlight=False)
        more = len(result.failed) - 10
        if more > 0:
            err.print(f"  ... and {more} more")
        from textbook_gen.errors import JobsFailed

        raise JobsFailed(f"{len(result.failed)} of {result.manifest['counts']['jobs']} jobs"
                         " failed (reasons above); the outputs hold the others. Run the same"
                         " command again to retry the failed jobs: nothing stored is sent again")
    if not result.records:
        from textbook_gen.errors import NothingKept

        raise NothingKept(f"nothing was kept: curation rejected all {result.rejected:,}"
                          " documents (reasons above). Read the rejects, then change the"
                          " templates, the model or the curation settings and run again (only"
                          " changed prompts are sent)")


@app.command()
def curate(
    inputs: Annotated[list[str], typer.Argument(
        help="JSONL (.jsonl, .jsonl.zst) or Parquet files, or run directories; each record "
        "needs a 'text' field. A URL fsspec reads names objects in object storage "
        "(s3://bucket/corpus/*.jsonl.zst, quoted so the shell leaves the glob alone; needs "
        "the s3 extra, or gcsfs for gs://).", show_default=False)],
    out_dir: Annotated[str, typer.Option("--out", "-o", help="Where to write shards/, "
                                         "rejects/ and manifest.json: a directory (with "
                                         "--ray, one every node mounts).")],
    config: Annotated[Path | None, typer.Option(
        help="YAML file with curation settings (the keys of a spec's curation: section), or a "
        "curriculum spec whose curation: section to use.")] = None,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT",
                                     help="Shard format: parquet, jsonl.zst or jsonl.")
                   ] = "parquet",
    shard_max_records: Annotated[int, typer.Option(
        help="Records per shard file; a new file starts after this many.")] = 10_000,
    workers: WorkersOpt = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="ADDRESS", help="Curate on a Ray cluster: its address (host:port or "
        "ray://host:port), auto (the cluster `ray start` started here), or local (a throwaway "
        "cluster on this machine). Keeps the same records as without it. Needs the ray extra; "
        "--workers is then the number of Ray workers (default: the cluster's CPUs).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Run the curation stages alone on any corpus: filters, verification, dedup, decontamination."""
    _at_least("--shard-max-records", shard_max_records, 1)
    _at_least("--workers", workers, 1)
    from textbook_gen.curate.pipeline import curate_corpus
    from textbook_gen.ui import make_progress

    settings = _curation_settings(config)
    if fmt not in ("jsonl.zst", "jsonl", "parquet"):
        raise ConfigError(f"--format {fmt}: unknown shard format; use jsonl.zst, jsonl or parquet")
    if settings.enabled and settings.verify_code:
        _show_sandbox(settings.verify)
    progress = make_progress(err, quiet=quiet)
    try:
        result = curate_corpus(list(inputs), out_dir, settings, fmt=fmt,
                               shard_max_records=shard_max_records, progress=progress.stage,
                               workers=workers, ray=ray, quiet=quiet)
    finally:
        progress.close()
    kept = sum(s.records for s in result.shards)
    rejected = sum(s.records for s in result.rejects)
    err.print(f"[green]done[/] {out_dir}: {kept:,} kept, {rejected:,} rejected "
              f"(reasons: textbook-gen cat {out_dir} --rejects)")
    out.print(str(out_dir))


def _summary(result: Any, money: Any) -> None:
    """The end of a run: what was kept, why the rest was rejected, spend, where, what next."""
    m, st, ledger = result.manifest, result.stats, result.ledger
    counts = m["counts"]
    d = escape(str(result.out_dir))
    spend = money(ledger.run_usd if ledger.cost_known else None)
    if ledger.max_cost_usd is not None:  # the cap is the directory's, over every invocation
        spend += (f" this run; {money(ledger.spent_usd)} of the {money(ledger.max_cost_usd)}"
                  " cap spent in this directory")
    else:
        spend += " this run"
    done = "[green]done[/]" if counts["records"] else "[red]nothing kept[/]"
    err.print(f"{done} {counts['jobs']:,} jobs: [bold]{counts['records']:,} kept[/],"
              f" {counts['rejected']:,} rejected, {counts['failed']:,} failed · {st.succeeded:,}"
              f" new answers, {st.cached:,} from the store · {spend}", highlight=False)
    cov = m.get("coverage")
    if cov:
        why: dict[str, int] = {}
        for g in cov["gave_up"]:
            key = g["reason"].split(":")[0]
            why[key] = why.get(key, 0) + 1
        short = ", ".join(f"{n:,} {k}" for k, n in why.items())
        err.print(f"  cells at target: {cov['target_met']:,} of {cov['cells']:,}"
                  f"{f' (short: {short})' if short else ''} · {cov['requests']:,} requests,"
                  f" {cov['requests_per_kept'] or '-'} per kept document", highlight=False)
    for stage, c in m["curation"]["stages"].items():
        if c["dropped"]:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(c["dropped"].items(),
                                                             key=lambda kv: -kv[1]))
            err.print(f"  rejected by {stage}: {escape(reasons)}", highlight=False)
    shards = [s for s in m["shards"] if s["name"].startswith("shards/")]
    err.print(f"  corpus: {d}/shards/ ({len(shards)} {m['format']} shard"
              f"{'s' * (len(shards) != 1)}, manifest: {d}/manifest.json)", highlight=False)
    if not counts["records"]:
        err.print(f"  next: textbook-gen show {d} --rejected --random 2    (why documents were"
                  " rejected)\n"
                  f"        textbook-gen cat {d} --rejects    (every reject, with its reason)",
                  highlight=False)
        return
    err.print(f"  next: textbook-gen show {d} --random 2    (read two documents)\n"
              f"        textbook-gen show {d} --rejected --random 2    (and two rejects, with why)\n"
              f"        textbook-gen cat {d} --text | your-tokenizer    (the text, NUL-separated)",
              highlight=False)


def _show_sandbox(settings: Any) -> None:
    """Refuse early where model code cannot be confined; otherwise say what confines it."""
    from textbook_gen.curate.sandbox import sandbox_for

    sandbox = sandbox_for(settings)
    err.print(escape(sandbox.describe()), style=None if sandbox.strong else "yellow",
              highlight=False)


def _curation_settings(path: Path | None):  # noqa: ANN202 - CurationSettings, imported lazily
    from textbook_gen.curate.settings import CurationSettings

    if path is None:
        return CurationSettings()
    from textbook_gen.spec import load_curriculum, load_yaml_model

    data = load_yaml_model(path)  # every problem with its line, like a spec
    # curate has no judge: its calls are paid, so they belong to a run, with its store (never
    # paid twice) and its budget. A spec's judge is the run's business: say it is not run here;
    # a curation file that asks for one asks for what curate cannot do.
    if isinstance(data, dict) and "subjects" in data:  # a whole curriculum: use its section
        spec = load_curriculum(path)
        settings = spec.curation.resolve_paths(path.parent)
        if settings.enabled and settings.judge.enabled:
            err.print(f"{escape(spec.where('curation', 'judge', 'enabled'))}: curate runs no "
                      "judge (its paid calls belong to `textbook-gen run`, with the run's store"
                      " and budget): curating without it, judge_score stays null",
                      highlight=False)
        return settings
    settings = load_yaml_model(path, CurationSettings).resolve_paths(path.parent)
    if settings.enabled and settings.judge.enabled:
        from textbook_gen.spec import key_line

        raise SpecError([f"{key_line(path, 'judge', 'enabled')}: judge.enabled: curate runs "
                         "no judge (its paid calls belong to `textbook-gen run`, which keeps "
                         "them in the run's store and budget); set it to false, or curate "
                         "inside a run"])
    return settings


def _tree(source: Path, dest: Path) -> list[tuple[Path, Path]]:
    """(file, where it goes) for every file under ``source``."""
    return [(f, dest / f.relative_to(source)) for f in sorted(source.rglob("*")) if f.is_file()]


def _refuse_overwrite(targets: list[Path], force: bool, instead: str) -> None:
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        shown = ", ".join(str(p) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise ConfigError(f"what would be written already exists ({shown}; {len(existing)}"
                          f" file(s)); nothing was written. {instead}, or add --force to"
                          " overwrite")


def _copy(plan: list[tuple[Path, Path]]) -> None:
    import shutil

    for src, dest in plan:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)


@app.command()
def examples(
    copy_to: Annotated[Path | None, typer.Option(
        "--copy", metavar="DIR",
        help="Copy the example curricula, their small templates and the bundled prompts/ "
        "(to edit) into DIR.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="With --copy: overwrite files that already exist in DIR.")] = False,
) -> None:
    """List the bundled example curricula, or copy them to start your own."""
    from textbook_gen.prompts import data_dir

    source = data_dir("curricula")
    specs = sorted(p for p in source.rglob("*.yaml") if not p.name.endswith(".topics.yaml"))
    if copy_to is None:
        for path in specs:
            first = path.read_text("utf-8").splitlines()[0].lstrip("# ")
            out.print(f"{path}  [dim]{escape(first)}[/]")
        out.print("[dim]copy them with: textbook-gen examples --copy DIR[/]")
        return
    plan = [*_tree(source, copy_to), *_tree(data_dir("prompts"), copy_to / "prompts")]
    _refuse_overwrite([dest for _, dest in plan], force, "Copy into an empty folder")
    _copy(plan)
    out.print(f"copied {len(specs)} curricula and the bundled prompts/ to"
              f" {copy_to} (a spec uses the prompts there with  templates: prompts)")


@app.command()
def init(
    name: Annotated[str, typer.Argument(help="The course's name: a folder of that name is made.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite files that exist.")] = False,
) -> None:
    """Start a curriculum: a commented spec (every key, its default and meaning) and templates."""
    from textbook_gen.prompts import data_dir
    from textbook_gen.spec import slugify

    folder = Path(name)
    slug = slugify(folder.name)
    spec = folder / f"{slug}.yaml"
    plan = [*_tree(data_dir("prompts"), folder / "templates"),
            *_tree(data_dir("curricula") / "templates-small", folder / "templates-small")]
    _refuse_overwrite([spec, *(dest for _, dest in plan)], force, "Choose another name")
    folder.mkdir(parents=True, exist_ok=True)
    text = (data_dir("scaffold") / "spec.yaml").read_text("utf-8").replace("{{ name }}", slug)
    spec.write_text(text, encoding="utf-8")
    _copy(plan)
    out.print(f"wrote {spec} (every key, with its default and meaning), {folder}/templates/ (for"
              f" strong models) and {folder}/templates-small/ (for the bundled model)\n"
              f"next: textbook-gen validate {spec}  ·  textbook-gen plan {spec}  ·"
              f"  textbook-gen run {spec}", highlight=False)


@app.command()
def batches(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (holds run.sqlite).")],
) -> None:
    """Show the state of a run's batch jobs as last polled (run again with --batch to poll)."""
    from textbook_gen.batch import describe_batches
    from textbook_gen.store import RunStore

    path = run_dir / "run.sqlite"
    if not path.exists():
        raise TextbookGenError(f"{run_dir}: no run.sqlite here; give the run directory of a run")
    with RunStore(path) as store:
        rows = describe_batches(store)
    if not rows:
        out.print(f"{run_dir}: no batches (this run did not use --batch)")
        return
    t = Table(title=f"batches of {run_dir}")
    for col in ("id", "provider", "remote id", "state", "requests", "remote status", "counts",
                "updated"):
        t.add_column(col)
    for r in rows:
        counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items() if v)
        t.add_row(r["id"], r["provider"], r["remote_id"] or "-", r["state"], str(r["requests"]),
                  r["remote_status"], counts, r["updated"])
    out.print(t)


@app.command()
def stats(
    run_dir: Annotated[Path, typer.Argument(help="Run or curate output directory.")],
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the same figures as one JSON object (for scripts).")] = False,
) -> None:
    """Summarise a corpus: coverage, rejections, quality, diversity, tokens and spend.

    Diversity is given twice, named apart: the published figures of Shaib et al. 2024
    (compression_ratio, ngram_diversity_score, self_repetition_score, homogenization_rougel,
    as their diversity package computes them) and ours (openings, word distinct-n,
    near-duplicates). See docs/measures.md."""
    import json

    from textbook_gen.stats import corpus_stats, render

    s = corpus_stats(run_dir)
    if as_json:
        sys.stdout.write(json.dumps(s.as_json(), indent=2) + "\n")
        return
    # on a pipe or in a file the tables keep their natural width: no column cut to "compressi…"
    render(out if out.is_terminal else Console(width=100_000, soft_wrap=True), s, run_dir)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run or curate output directory.")],
) -> None:
    """Write RUN_DIR/report.html: coverage, quality, rejections, diversity, spend (offline)."""
    from textbook_gen.report import write_report

    path = write_report(run_dir)
    out.print(str(path), highlight=False)


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="Run or curate output directory.")],
    ids: Annotated[list[str] | None, typer.Option("--id", metavar="ID",
                                                  help="Only this record id (repeatable).")] = None,
    subject: Annotated[str | None, typer.Option(help="Only this subject.")] = None,
    topic: Annotated[str | None, typer.Option(help="Only this topic.")] = None,
    audience: Annotated[str | None, typer.Option(help="Only this audience.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind of document.")] = None,
    rejected: Annotated[bool, typer.Option("--rejected", help="Show rejected records.")] = False,
    reason: Annotated[str | None, typer.Option(
        help="Only rejected records whose reason starts with this, or whose stage it is "
        "(implies --rejected).")] = None,
    random_n: Annotated[int | None, typer.Option("--random", metavar="N",
                                                 help="N matching records at random.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --random.")] = 0,
) -> None:
    """Read documents in the terminal, rendered as Markdown with quality and provenance."""
    from textbook_gen.show import Selection, render, select

    _at_least("--random", random_n, 1)
    chosen = Selection(tuple(ids or ()), subject, topic, audience, kind, rejected, reason)
    count = 0
    for record in select(run_dir, chosen, sample=random_n, seed=seed):
        render(out, record)
        count += 1
    if count == 0:
        err.print(f"{run_dir}: no {'rejected ' if rejected or reason else ''}record matches",
                  highlight=False)


@app.command("cat")
def cat_(
    path: Annotated[Path, typer.Argument(help="Run directory, shard, or JSONL/Parquet file.")],
    text: Annotated[bool, typer.Option("--text", help="Only the text of each document, each "
                                       "followed by the separator.")] = False,
    separator: Annotated[str, typer.Option(
        "--separator", "-s", metavar="SEP",
        help="With --text: what ends each document; backslash escapes work ('\\0', '\\n\\n'). "
        "The default NUL never occurs in model text, so boundaries survive a pipe "
        "(xargs -0, a tokenizer reading NUL-separated input). A document that contains the "
        "separator is an error, never a silent merge.")] = "\\0",
    rejects: Annotated[bool, typer.Option("--rejects", help="Show rejected records.")] = False,
    pairs: Annotated[bool, typer.Option(
        "--pairs", help="Preference pairs for DPO: one JSON line per answer the judge scored"
        " lower than its sample's chosen one (best-of-n candidates, drafts a revision beat),"
        " with prompt, system, chosen, rejected, scores, chosen_id and rejected_id. PATH is a"
        " run directory.")] = False,
) -> None:
    """Print records as JSONL (or just their text) for a training job or a pipe."""
    from textbook_gen.errors import ConfigError, InputError
    from textbook_gen.shards import dumps, iter_records

    if pairs and (text or rejects):
        raise ConfigError("--pairs writes JSON pairs; leave out --text and --rejects")

    try:
        sep = separator.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        raise ConfigError(f"--separator {separator!r}: not a valid escape sequence") from None
    if text and not sep:
        raise ConfigError("--separator: must not be empty (document boundaries would be lost)")
    if pairs:
        from textbook_gen.pairs import iter_pairs

        stream = iter_pairs(path)
    else:
        stream = iter_records(path, "rejects" if rejects else "shards")
    write = sys.stdout.write
    count = 0
    try:
        for record in stream:
            count += 1
            if not text:
                write(dumps(record) + "\n")
                continue
            body = str(record.get("text", ""))
            if sep in body:
                raise InputError(f"record {record.get('id', count)} contains the separator"
                                 f" {separator!r}; choose another with --separator")
            write(body + sep)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return
    if count == 0 and pairs:
        err.print(f"{path}: 0 pairs (pairs come from best-of-n candidates and revisions the"
                  " judge scored lower than the chosen answer: set candidates or"
                  " curation.revise, with the judge on)", highlight=False)
    elif count == 0:
        what = "rejected records" if rejects else "records"
        err.print(f"{path}: 0 {what}" + ("" if rejects else
                  f" (why: textbook-gen cat {path} --rejects)"), highlight=False)


def main() -> None:
    try:
        app(prog_name="textbook-gen")
    except TextbookGenError as e:
        if _debug["on"]:
            raise
        code = _fail(e).exit_code
        sys.exit(code)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
    except OSError as e:  # the machine's problem, not the tool's: one line that names the file
        if _debug["on"]:
            raise
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"[red]error:[/] {escape(where + (e.strerror or str(e)))}", highlight=False)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - a bug: say so in one line; --debug shows it
        if _debug["on"]:
            raise
        err.print(f"[red]internal error:[/] {escape(type(e).__name__ + ': ' + str(e))}\n"
                  "This is a bug in textbook-gen; rerun with --debug to see where, and report it."
                  " Everything already paid for is stored.", highlight=False)
        sys.exit(1)
