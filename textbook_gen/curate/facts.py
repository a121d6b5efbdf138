"""Per-document facts: what curation learns of a record without looking at any other record.

Token count, the first default filter that rejects it, the benchmarks it shares an n-gram
with, its exact-duplicate key and its MinHash digest are pure functions of one record and
the settings. ``DocumentStage`` computes them for a chunk of records; ``facts_of_chunks``
spreads chunks over a pool of processes (every core of this machine) and hands them back in
input order, so the pipeline's decisions, which need the whole corpus (selection, the
decontamination counts, dedup clusters), are the same whatever the number of workers. The
same ``DocumentStage`` is what a Ray Data map stage runs over blocks (``curate/distributed.py``).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from textbook_gen.curate.decontam import Decontaminator
from textbook_gen.curate.dedup import chunk_signatures
from textbook_gen.curate.filters import Filter, default_filters, first_rejection
from textbook_gen.curate.settings import CurationSettings
from textbook_gen.tokens import count_tokens_batch

Record = dict[str, Any]
Hits = list[tuple[int, list[int]]]


def default_workers() -> int:
    """Every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class ChunkFacts:
    """Facts of a chunk's records, in order. ``reasons[i]`` is None where record i passed the
    default filters; ``passing`` lists those, and ``keys``, ``digests`` and ``hits`` are
    rows of the passing records only."""

    tokens: list[int] | list[None]  # None each where counts are off
    reasons: list[str | None]
    passing: list[int]
    keys: list[bytes] | None
    digests: np.ndarray | None
    hits: list[Hits]
    pid: int = 0  # the process that computed them

    def of(self, i: int) -> tuple[bytes | None, np.ndarray | None, Hits]:
        """Dedup key, digest and decontamination hits of the ``i``th passing record."""
        return (self.keys[i] if self.keys is not None else None,
                self.digests[i] if self.digests is not None else None, self.hits[i])


class DocumentStage:
    """The per-document stages that need nothing but the record: token count, the default
    filters, decontamination lookups and dedup signatures."""

    def __init__(self, settings: CurationSettings):
        self.settings = settings
        self.filters: list[Filter] = default_filters(settings)
        self.decontam = Decontaminator(settings.decontaminate, settings.decontam_ngram)
        d = settings.dedup
        self.sign = d.exact or d.near
        self.k, self.num_perm, self.exact, self.near = d.shingle_words, d.num_perm, d.exact, d.near

    def __call__(self, records: list[Record]) -> ChunkFacts:
        texts = [str(r.get("text", "")) for r in records]
        tokens: list[int] | list[None] = (count_tokens_batch(texts)
                                          if self.settings.count_tokens else [None] * len(texts))
        reasons: list[str | None] = []
        passing = []
        for i, (record, n) in enumerate(zip(records, tokens, strict=True)):
            reason = self.reason(record, n)
            reasons.append(reason)
            if reason is None:
                passing.append(i)
        keys, digests, hits = self.signed([texts[i] for i in passing])
        return ChunkFacts(tokens, reasons, passing, keys, digests, hits, os.getpid())

    def reason(self, record: Record, tokens: int | None) -> str | None:
        """The reason the first default filter gives to reject the record, or None."""
        q = record.get("quality")
        # the filters read the token count from the record: give them a shallow copy of it
        view = {**record, "quality": {**(q if isinstance(q, dict) else {}), "tokens": tokens}}
        return first_rejection(self.filters, view)

    def signed(self, texts: list[str]) -> tuple[list[bytes] | None, np.ndarray | None, list[Hits]]:
        """Dedup keys and digests, and decontamination hits, of texts."""
        keys, digests = (chunk_signatures(texts, k=self.k, num_perm=self.num_perm,
                                          exact=self.exact, near=self.near)
                         if self.sign else (None, None))
        hits = ([self.decontam.lookup(t) for t in texts] if self.decontam.indexes
                else [[] for _ in texts])
        return keys, digests, hits


_STAGE: DocumentStage | None = None


def _start_worker(settings: CurationSettings) -> None:
    global _STAGE
    _STAGE = DocumentStage(settings)


def _facts_in_worker(records: list[Record]) -> ChunkFacts:
    assert _STAGE is not None
    return _STAGE(records)


def facts_of_chunks(chunks: Iterable[list[Record]], settings: CurationSettings, workers: int,
                    stage: DocumentStage | None = None
                    ) -> Iterator[tuple[list[Record], ChunkFacts]]:
    """Each chunk with its facts, in input order. With ``workers`` > 1 the chunks after the
    first go to that many processes, at most two chunks each in flight (memory stays bounded
    by the chunk size); the first chunk is done here, so a small curation starts no pool."""
    stage = stage or DocumentStage(settings)
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        return
    yield first, stage(first)
    if workers <= 1:
        for chunk in it:
            yield chunk, stage(chunk)
        return
    import multiprocessing

    # spawn, not fork: the parent has threads (the progress display, the store's writer)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(settings,)) as pool:
        pending: deque[tuple[list[Record], Future[ChunkFacts]]] = deque()
        for chunk in it:
            pending.append((chunk, pool.submit(_facts_in_worker, chunk)))
            if len(pending) >= 2 * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
