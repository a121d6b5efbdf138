"""Stored responses -> records with provenance: the step between the run store and curation.

A record is rebuilt from the current spec's jobs and what the store holds for them, so the
same store always gives the same records, and shards can be re-made without a request.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from textbook_gen import __version__
from textbook_gen.expand import Job
from textbook_gen.prompts import PromptRenderer
from textbook_gen.spec import Curriculum
from textbook_gen.store import StoredResponse

PARAMS = ("temperature", "max_tokens", "top_p", "truncation_retry")


LOOP_FIELDS = ("sample", "n", "cell", "target", "candidate", "revision", "revision_of",
               "critique", "draft_score", "task_sha256")


def record_for(spec: Curriculum, job: Job, resp: StoredResponse, renderer: PromptRenderer,
               params: dict[str, Any], loop: dict[str, Any] | None = None, *,
               answer_start_chars: int = 0) -> dict[str, Any]:
    """``params``: those of the request as it was sent (after a truncation retry, its own).
    ``loop``: where the record stands in the closed loop (``LOOP_FIELDS``): its sample and
    cell, which candidate or revision it is, what it revised and the critique it answered, and
    the key of the sample's own prompt (the ``prompt`` of a preference pair).
    ``answer_start_chars``: how much of the text the template wrote (``answer_start``), which
    measures of the model's writing leave out (``measures.model_text``)."""
    params = {k: params.get(k) for k in PARAMS}  # one set of keys: one schema for every shard
    chain = {k: (loop or {}).get(k) for k in LOOP_FIELDS}
    chain.update(sample=job.sample_id, n=job.sample, cell=job.cell, candidate=job.candidate,
                 revision=job.revision)
    chain["task_sha256"] = chain["task_sha256"] or resp.key
    return {
        "id": job.id,
        "text": resp.text or "",
        "kind": job.kind,
        "curriculum": spec.name,
        "subject": job.subject,
        "topic": job.topic,
        "audience": job.audience,
        "style": job.style,
        "persona": job.persona or None,
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
            "seed_document": renderer.seed_provenance(job),
            "response_id": resp.response_id,
            "finish_reason": resp.finish_reason,
            "answer_start_chars": answer_start_chars,
            "usage": {"input": resp.input_tokens, "output": resp.output_tokens},
            "cost_usd": None if resp.cost is None else round(resp.cost, 8),  # None: unknown
            "batch_id": resp.batch_id,
            "created_at": dt.datetime.fromtimestamp(resp.created_at, dt.UTC).isoformat(),
            "tool": f"textbook-gen {__version__}",
            "loop": chain,
        },
        "quality": {},  # filled by curation (curate.pipeline.QUALITY_FIELDS)
    }
