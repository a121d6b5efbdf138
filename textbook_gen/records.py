"""Stored responses -> records with provenance: the step between the run store and curation.

A record is rebuilt from the current spec's jobs and what the store holds for them, so the
same store always gives the same records, and shards can be re-made without a request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from textbook_gen import __version__
from textbook_gen.expand import Job, jobs
from textbook_gen.prompts import PromptRenderer
from textbook_gen.spec import Curriculum
from textbook_gen.store import RunStore, StoredResponse

PARAMS = ("temperature", "max_tokens", "top_p", "truncation_retry")


def record_for(spec: Curriculum, job: Job, resp: StoredResponse, renderer: PromptRenderer,
               params: dict[str, Any]) -> dict[str, Any]:
    """``params``: those of the request as it was sent (after a truncation retry, its own)."""
    params = {k: params.get(k) for k in PARAMS}  # one set of keys: one schema for every shard
    return {
        "id": job.id,
        "text": resp.text or "",
        "kind": job.kind,
        "curriculum": spec.name,
        "subject": job.subject,
        "topic": job.topic,
        "audience": job.audience,
        "style": job.style,
        "seed_words": list(job.seed_words),
        "provenance": {
            "spec_sha256": spec.sha256,
            "template": job.template,
            "template_sha256": renderer.template_sha256(job.template),
            "prompt_sha256": resp.key,
            "provider": resp.provider,
            "model": resp.model,
            "params": params,
            "seed": job.seed,
            "response_id": resp.response_id,
            "finish_reason": resp.finish_reason,
            "usage": {"input": resp.input_tokens, "output": resp.output_tokens},
            "cost_usd": round(resp.cost_usd, 8),
            "batch_id": resp.batch_id,
            "created_at": dt.datetime.fromtimestamp(resp.created_at, dt.UTC).isoformat(),
            "tool": f"textbook-gen {__version__}",
        },
        "quality": {},  # filled by curation (curate.pipeline.QUALITY_FIELDS)
    }


def iter_records(spec: Curriculum, renderer: PromptRenderer, store: RunStore,
                 limit: int | None) -> Iterator[dict[str, Any]]:
    for job in jobs(spec, limit, store.job_identity):
        found = store.job_answer(job.id)
        if found is not None and found[0].status == "ok":
            yield record_for(spec, job, found[0], renderer, found[1])
