"""The paid middle of the flow as one interface: work items in, stored answers out.

``engine.Engine`` (live API calls) and ``batch.BatchRunner`` (batch APIs) implement
``Generator``; the run drives either with ``drive``, which owns the event loop and Ctrl-C
(first press: no new requests, finish those in flight; second: stop at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from textbook_gen.progress import Progress
from textbook_gen.providers.base import Request


@dataclass(frozen=True, slots=True)
class WorkItem:
    job_id: str
    request: Request
    kind: str = ""  # the document kind and curriculum cell, for the collapse watch
    cell: str = ""


# what a run counts (summed over rounds and workers), and what it holds at a moment (summed
# over workers for the live display only)
COUNTERS = ("done", "cached", "sent", "succeeded", "failed", "truncated", "refused", "retries",
            "input_tokens", "output_tokens", "cost_usd")
GAUGES = ("in_flight", "streaming_tokens")


@dataclass
class GenerationStats:
    """Live counters of one generator; the progress display reads them."""

    total: int = 0
    done: int = 0  # jobs brought to an end state this run, from the store or the provider
    cached: int = 0  # answered from the store: nothing sent
    sent: int = 0  # HTTP attempts (retries included) or batches submitted
    succeeded: int = 0
    failed: int = 0
    truncated: int = 0
    refused: int = 0
    retries: int = 0
    in_flight: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    streaming_tokens: int = 0  # generated so far by answers not yet complete (local model)
    cost_usd: float = 0.0  # spent this run by this generator
    cost_known: bool = True
    started: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None  # None | interrupted | budget | fatal

    def add(self, other: GenerationStats) -> None:
        """Add the counters of another generator's run (one round of the loop) to these."""
        for name in ("total", *COUNTERS):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost_known = self.cost_known and other.cost_known
        self.stop_reason = other.stop_reason or self.stop_reason

    @property
    def projected_cost(self) -> float | None:
        """Spend so far scaled to the jobs still to send (cached ones cost nothing)."""
        paid = self.done - self.cached
        if not self.cost_known:
            return None
        if paid <= 0:
            return self.cost_usd
        return self.cost_usd * (self.total - self.cached) / paid


class Generator(Protocol):
    stats: GenerationStats

    async def run(self, items: Iterable[WorkItem], total: int) -> GenerationStats:
        """Bring every item to an end state in the store (answered or failed with a reason),
        or stop early with ``stats.stop_reason`` set; raise on an error that is not a job's."""
        ...

    def request_stop(self, reason: str = "interrupted") -> None:
        """No new requests; what is in flight is finished and stored."""
        ...

    def abort(self) -> None:
        """Stop at once; everything already stored stays."""
        ...

    async def aclose(self) -> None: ...


def drive(generator: Generator, items: Iterator[WorkItem], total: int, progress: Progress,
          label: str = "generate") -> GenerationStats:
    """Run a generator to its end on a fresh event loop, with Ctrl-C handling."""

    async def main() -> GenerationStats:
        loop = asyncio.get_running_loop()
        presses = 0

        def on_sigint() -> None:
            nonlocal presses
            presses += 1
            if presses == 1:
                progress.message("Stopping: no new requests; waiting for those in flight "
                                 "(press Ctrl-C again to stop at once)")
                generator.request_stop()
            else:
                generator.abort()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            generator.stats.total = total  # the display reads it before the generator starts
            with progress.generation(generator.stats, label):
                return await generator.run(items, total)
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
            await generator.aclose()

    return asyncio.run(main())
