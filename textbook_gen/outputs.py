"""Store -> curated outputs of a run directory: shards, rejects and the manifest.

Everything here is derived from the run store, into a new ``shards.Build`` beside the old
outputs; the manifest switches to it in one atomic rename. A crash here loses nothing paid
for and leaves the previous corpus readable; a rerun builds the outputs again. The closed
loop (``loop.py``) curates once per round and commits only its last round's build.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textbook_gen import __version__
from textbook_gen.curate.judge import make_judge
from textbook_gen.curate.pipeline import CurationResult, LoopCuration, curate, kept_diversity
from textbook_gen.ledger import Ledger
from textbook_gen.progress import Progress
from textbook_gen.prompts import PromptRenderer
from textbook_gen.shards import Build
from textbook_gen.spec import Curriculum
from textbook_gen.store import RunStore


def curate_stored(spec: Curriculum, store: RunStore, out_dir: Path,
                  records: Iterable[dict[str, Any]], *, ledger: Ledger, progress: Progress,
                  loop: LoopCuration | None = None, pay: bool = True,
                  renderer: PromptRenderer | None = None, workers: int | None = None
                  ) -> tuple[Build, CurationResult]:
    """Curate ``records`` (rebuilt from the store) into a new build, not yet committed.
    ``pay`` false: the judge only reads scores already stored (the budget ran out)."""
    build = Build(out_dir, whole_folder=False)  # a run directory: the store lives there too
    fmt, per_shard = spec.output.format, spec.output.shard_max_records
    # benchmark files are relative to the spec; with enabled: false curate() keeps everything
    settings = spec.curation.resolve_paths(spec.source_path.parent)
    judge = (make_judge(spec, store, progress, ledger, pay=pay,
                        sent=loop.judged if loop is not None else None)
             if settings.enabled and settings.judge.enabled else None)
    extra: list[Any] = []
    seeds = renderer.seeds if renderer is not None else None
    if seeds is not None and settings.enabled and settings.copy_guard.enabled:
        from textbook_gen.seeds import CopyGuard

        g = settings.copy_guard
        extra.append(CopyGuard(seeds, g.ngram, g.max_overlap))
    result = curate(records, settings, build, fmt=fmt, shard_max_records=per_shard,
                    judge=judge, progress=progress.stage, loop=loop, extra_filters=extra,
                    workers=workers)
    return build, result


def commit_outputs(spec: Curriculum, renderer: PromptRenderer, store: RunStore, build: Build,
                   result: CurationResult, *, jobs: int, failed: int, ledger: Ledger,
                   coverage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the manifest of a curated build, which switches the outputs to it."""
    kept = sum(s.records for s in result.shards)
    rejected = sum(s.records for s in result.rejects)
    totals = store.totals()
    manifest = {
        "name": spec.name,
        "tool": f"textbook-gen {__version__}",
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "spec": {"path": str(spec.source_path), "sha256": spec.sha256},
        "templates": renderer.template_hashes(),
        "model": {"provider": spec.model.provider, "name": spec.model.name},
        "job_identity": store.job_identity,
        "format": spec.output.format,
        "counts": {"jobs": jobs, "records": kept, "rejected": rejected, "failed": failed},
        "usage": {"input_tokens": totals["input_tokens"],
                  "output_tokens": totals["output_tokens"], "cost_usd": totals["cost_usd"]},
        "this_run": ledger.to_manifest(),
        "curation": result.to_manifest(),
        "diversity": kept_diversity(build.root, result.shards),
        "shards": [s.to_dict() for s in [*result.shards, *result.rejects]],
    }
    if coverage is not None:
        manifest["coverage"] = coverage
    build.commit(manifest)
    return manifest
