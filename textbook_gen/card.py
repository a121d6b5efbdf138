"""The ``README.md`` dataset card of an ``export --format hf`` folder, in the Hugging Face
format: a YAML header (a license placeholder, size category, tags), then how the corpus was made,
its figures and the known limitations of synthetic text.

The header has no ``configs:`` block, on purpose: ``datasets.load_dataset(folder)`` finds the
splits from the file names (``data/<split>-NNNNN-of-MMMMM-<sha256 prefix>.parquet``) and keys
its cache on their paths (which name their content) and modification times. With a ``configs:``
block, ``datasets`` (5.2) keys the cache on the folder's basename and the ``data_files``
patterns only, so a load after ``export --force``, or of another export whose folder has the
same basename, returned the rows cached before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from textbook_gen.shards import read_manifest

LICENSE_PLACEHOLDER = "other"  # the user sets it: see the comment written beside it

LIMITATIONS = """\
- Every document was written by a language model. It can state false facts fluently, repeat
  the biases of the model that wrote it, and be less varied than human text; curation removes
  some of this (filters, exercises run in a sandbox, a judge where one was used, deduplication),
  not all of it.
- Judge scores are one model's opinion of educational value, not a check of correctness.
- Exercises marked verified passed their own tests; the tests were written by the model too.
- Check the terms of use of the models named above before you train on or publish the data.
"""


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def write_card(folder: Path, runs: list[Path], export: dict[str, Any]) -> None:
    splits = export["splits"]
    documents = sum(s["documents"] for s in splits.values())
    header = {
        "license": LICENSE_PLACEHOLDER,
        "size_categories": [_size_category(documents)],
        "tags": ["synthetic", "textbook", "textbook-gen"],
        "task_categories": ["text-generation"],
    }
    head = yaml.safe_dump(header, sort_keys=False).replace(
        f"license: {LICENSE_PLACEHOLDER}\n",
        f"license: {LICENSE_PLACEHOLDER}  # PLACEHOLDER: set your corpus's license (an SPDX id"
        " such as cc-by-4.0), after checking the terms of use of the models that wrote it\n")
    body = [f"# Synthetic textbook corpus ({', '.join(r.name for r in runs)})", "",
            f"Generated with {export['tool']} from curriculum specs: each spec"
            " is expanded into prompts (subjects x topics x audiences x styles, with seeds),"
            " sent to a language model, and the answers curated (filters, exercises run in a"
            " sandbox, optional LLM judge, decontamination, near-duplicate removal). Every record"
            " carries its provenance (spec and template hashes, model, parameters, seed).", "",
            "## Splits", "", "| split | documents |", "|---|---|"]
    body += [f"| {name} | {s['documents']:,} |" for name, s in splits.items()]
    sel = export["selection"]
    body += ["", f"Selection: kinds {sel['kinds'] or 'all'}, minimum judge score"
             f" {sel['min_score']}, verified only {sel['verified_only']}; validation fraction"
             f" {sel['validation']} by a hash of each id (no document in both), seeded shuffle"
             f" ({sel['seed']})."]
    for run in runs:
        m = read_manifest(run) or {}
        body += ["", f"## Source: `{run.name}`", ""]
        if m.get("model"):
            body.append(f"- model: {m['model'].get('provider')}/{m['model'].get('name')}")
        if m.get("spec"):
            body.append(f"- spec sha256: `{m['spec'].get('sha256')}`")
        for name, sha in (m.get("templates") or {}).items():
            body.append(f"- template `{name}` sha256: `{sha}`")
        counts = m.get("counts") or {}
        if counts:
            body.append(f"- jobs {counts.get('jobs', 0):,}, kept {counts.get('records', 0):,},"
                        f" rejected {counts.get('rejected', 0):,}, failed"
                        f" {counts.get('failed', 0):,}")
        stages = ((m.get("curation") or {}).get("stages") or {})
        for stage, c in stages.items():
            if c.get("in"):
                dropped = ", ".join(f"{k} {v:,}" for k, v in c.get("dropped", {}).items())
                body.append(f"- curation {stage}: {c['in']:,} in, {c['kept']:,} kept"
                            + (f" (dropped: {dropped})" if dropped else ""))
        try:
            from textbook_gen.stats import corpus_stats

            stats = corpus_stats(run)
        except Exception:  # noqa: BLE001 - figures are a courtesy; the card is written anyway
            stats = None
        if stats is not None:
            for kd in stats.diversity:
                top = kd.openings.top[0][0] if kd.openings.top else ""
                body.append(f"- diversity of `{kd.kind}` ({kd.documents:,} documents):"
                            f" ngram_diversity_score {kd.ngram_diversity.score:.3f},"
                            f" compression_ratio {kd.compression.ratio:.3f} (both as the"
                            " `diversity` package of Shaib et al. defines them), most common"
                            f" opening {top!r} in {kd.openings.top_share:.0%}")
    body += ["", "## Known limitations", "", LIMITATIONS]
    (folder / "README.md").write_text(f"---\n{head}---\n\n" + "\n".join(body), "utf-8")
