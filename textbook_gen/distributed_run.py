"""``textbook-gen run --ray ADDRESS --workers N``: generation spread over a Ray cluster.

Jobs are partitioned by a stable hash of their request's key (jobs that send the same request
meet in one engine, which sends it once). Each Ray worker is an actor with its own
engine (its own connection pool), its share of the rate limits and of what is left of the
budget, and its own store partition, ``run-part-NNN.sqlite`` in the run directory, written
as durably as ``run.sqlite`` (each answer is committed before the worker takes its next
job). A worker reads the run's store read-only beneath its partition, so a job answered
before is not sent again and an answer cut short is continued, exactly as in one process.

When a step ends (or fails, or is interrupted) the driver takes every partition into
``run.sqlite`` (``RunStore.absorb_partitions``); a run killed before that leaves the
partitions, and the next command that opens the store takes them in (``plan``, ``report``
and the rerun all see one run). Curation then reads ``run.sqlite`` as always.

Budget and rate limits are split into shares, not coordinated per request: the shares sum
exactly to the whole (10 over 3 workers: 4, 3, 3), so the cluster can never spend more than
``--max-cost`` or send faster than the limits, and no request waits on a round trip to a
coordinator. A worker needs at least one of each limit, so there are never more workers than
the smallest of ``concurrency`` and the limits the spec sets. The price: a worker that
spends its share stops while another may have some left (at most one request's worst case
each, plus whatever the others did not need), and a skewed partition finishes later.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import asdict, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from textbook_gen.errors import ConfigError, TextbookGenError
from textbook_gen.generator import COUNTERS, GAUGES, GenerationStats, WorkItem
from textbook_gen.ledger import Ledger, StageSpend
from textbook_gen.progress import Progress
from textbook_gen.spec import Curriculum
from textbook_gen.store import RunStore, StoredResponse
from textbook_gen.watch import Alarm

STOP_ORDER = ("fatal", "collapse", "budget", "interrupted")  # the stop a run reports first


def partition_of(request_key: str, n: int) -> int:
    """The worker of a job: a stable hash of its request's key (the same on every machine and
    run), so jobs that send the same request meet in one engine, which sends it once."""
    return int.from_bytes(hashlib.blake2b(request_key.encode(), digest_size=8).digest(),
                          "big") % n


def partition_path(run_dir: Path, k: int) -> Path:
    return run_dir / f"run-part-{k:03d}.sqlite"


class PartitionStore(RunStore):
    """A worker's store: writes go to its partition; reads fall through to the run's store,
    opened read-only as it was when the step began."""

    def __init__(self, path: Path, base: Path):
        super().__init__(path, exclusive=True, partitions=False)
        # immutable: no locks and no shared memory, so a worker on another node reads it over
        # a network filesystem; the driver checkpointed it and does not write during a step
        self.base = (sqlite3.connect(f"file:{base}?mode=ro&immutable=1", uri=True,
                                     check_same_thread=False) if base.exists() else None)

    def get_response(self, key: str) -> StoredResponse | None:
        own = super().get_response(key)
        if (own is not None and own.status == "ok") or self.base is None:
            return own
        theirs = self.response_in(self.base, key)
        return theirs if theirs is not None and (own is None or theirs.status == "ok") else own

    def job_key(self, job_id: str) -> str | None:
        own = super().job_key(job_id)
        if own is not None or self.base is None:
            return own
        return self.job_key_in(self.base, job_id)

    def close(self) -> None:
        if self.base is not None:
            self.base.close()
        super().close()


class _Worker:
    """A Ray actor: one engine over its share of a step's jobs."""

    def __init__(self, spec: Curriculum, part: str, base: str, retry_base_delay: float,
                 rate_window: float, workers: int):
        self.spec, self.part, self.base, self.workers = spec, Path(part), Path(base), workers
        self.retry_base_delay, self.rate_window = retry_base_delay, rate_window
        self.generator: Any = None
        self.stopped = False  # asked to stop before its step began
        # the collapse watch's alarms of this worker's answers, in order; the driver shows
        # and logs them (it reads the ones it has not seen, so a lost poll loses none)
        self.alarms: list[Alarm] = []

    def run(self, items: list[WorkItem], stage: str, max_cost: float | None,
            max_tokens: int | None
            ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[Alarm]]:
        from textbook_gen.run import make_generator

        ledger = Ledger(max_cost, max_tokens)
        with PartitionStore(self.part, self.base) as store:
            self.generator = make_generator(self.spec, store, ledger, batch=False,
                                            retry_base_delay=self.retry_base_delay,
                                            rate_window=self.rate_window, poll_interval=30.0,
                                            on_alarm=self.alarms.append, stage=stage,
                                            limit_share=self.workers)
            if self.stopped:
                self.generator.request_stop()

            async def main() -> GenerationStats:
                try:
                    return await self.generator.run(items, len(items))
                finally:
                    await self.generator.aclose()

            stats = asyncio.run(main())
        return _stats_dict(stats), {k: asdict(v) for k, v in ledger.stages.items()}, self.alarms

    def stats(self, alarms_seen: int) -> tuple[dict[str, Any], list[Alarm]]:
        """The live counters, and the alarms after the first ``alarms_seen``."""
        live = _stats_dict(self.generator.stats) if self.generator is not None else {}
        return live, self.alarms[alarms_seen:]

    def stop(self) -> None:
        self.stopped = True
        if self.generator is not None:
            self.generator.request_stop()


def _stats_dict(s: GenerationStats) -> dict[str, Any]:
    return {f.name: getattr(s, f.name) for f in fields(s)}


SPLIT = ("concurrency", "rpm", "tpm", "input_tpm", "output_tpm")  # engine settings split


def part_of(whole: int, n: int, k: int) -> int:
    """Worker ``k``'s part of ``whole`` over ``n`` workers: the parts sum to ``whole``."""
    return whole // n + (k < whole % n)


def worker_count(spec: Curriculum, requested: int) -> tuple[int, str | None]:
    """How many workers a run gets: ``requested``, or fewer where a limit of the spec has
    fewer units than that (a worker with no part of a limit could never send); with the
    sentence that says so."""
    e = spec.engine
    limits = {name: getattr(e, name) for name in SPLIT if getattr(e, name) is not None}
    name, least = min(limits.items(), key=lambda x: x[1])
    if requested <= least:
        return requested, None
    return least, (f"run --ray: {least} workers, not {requested}: engine.{name} is {least}, and"
                   " each worker needs at least one of it (raise it to use more workers)")


def _share(spec: Curriculum, n: int, k: int) -> Curriculum:
    """The spec worker ``k`` of ``n`` runs: its part of the concurrency and of every rate
    limit (parts sum to the whole; ``worker_count`` made each at least 1). The budget is
    handed to each step (``budget_parts``)."""
    e = spec.engine
    parts = {name: part_of(getattr(e, name), n, k) for name in SPLIT
             if getattr(e, name) is not None}
    return spec.model_copy(update={"engine": e.model_copy(update={
        **parts, "max_cost_usd": None, "max_total_tokens": None})})


def budget_parts(ledger: Ledger, n: int) -> list[tuple[float | None, int | None]]:
    """What is left of the run's budget (cost, tokens), split over ``n`` workers so that the
    parts never sum to more than what is left."""
    tokens = None if ledger.max_tokens is None else max(0, ledger.max_tokens - ledger.tokens)
    cost = None
    if ledger.max_cost_usd is not None:
        left = max(0.0, ledger.max_cost_usd - ledger.spent_usd)
        cost = left / n
        while Fraction(cost) * n > Fraction(left):  # a rounding up in the division
            cost = math.nextafter(cost, 0.0)
    return [(cost, None if tokens is None else part_of(tokens, n, k)) for k in range(n)]


class RayGeneration:
    """The actors of one run, reused by every step (each round of the loop, each stage)."""

    def __init__(self, spec: Curriculum, store: RunStore, address: str, workers: int | None,
                 retry_base_delay: float, rate_window: float,
                 on_alarm: Callable[[Alarm], None] | None = None):
        """``on_alarm`` receives the collapse watch's alarms of every worker as the driver
        learns of them (the run shows and logs them, as it does for one engine)."""
        from textbook_gen.curate.distributed import connect

        cpus = connect(address, workers)
        import ray

        self.ray = ray
        self.store = store
        self.n, self.capped = worker_count(spec, max(1, workers or cpus))
        # each worker watches its own answers: a hash of the job id makes them a random share
        # of the run's, so a window of them measures what a window of the whole stream does
        self.stop_on_collapse = spec.watch.enabled and spec.watch.stop
        self.on_alarm = on_alarm
        self.alarms_seen = [0] * self.n
        # threaded: stats() and stop() answer while run() works
        actor: Any = ray.remote(max_concurrency=4, max_restarts=0)(_Worker)  # type: ignore[call-overload]
        self.actors = [actor.remote(_share(spec, self.n, k),
                                    str(partition_path(store.path.parent, k)),
                                    str(store.path), retry_base_delay, rate_window, self.n)
                       for k in range(self.n)]

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.store.absorb_partitions()

    def generate(self, items: Iterator[WorkItem], count: int, label: str, stage: str,
                 ledger: Ledger, progress: Progress) -> GenerationStats:
        """Bring the step's jobs to an end state in the store, on the cluster."""
        shares: list[list[WorkItem]] = [[] for _ in range(self.n)]
        for item in items:  # rendering prompts is the driver's: the spec's files are here
            shares[partition_of(item.request.key, self.n)].append(item)
        if self.capped is not None:
            progress.message(self.capped)
            self.capped = None  # said once, at the first step
        self.store.checkpoint()  # what the workers read beneath their partitions: one file
        refs = [a.run.remote(share, stage, cost, tokens) for a, share, (cost, tokens)
                in zip(self.actors, shares, budget_parts(ledger, self.n), strict=True)]
        live = GenerationStats(total=count)
        results: list[Any] = []
        try:
            with progress.generation(live, label):
                results = self._wait(refs, live)
        except KeyboardInterrupt:
            self.stop()
            results = self._wait(refs, live)
        except Exception as e:
            raise _unwrapped(e) from None
        finally:
            self.store.absorb_partitions()  # an error or not: every stored answer is kept
        total = GenerationStats(total=count)
        answers = ledger.ray.setdefault("answers_by_worker", [0] * self.n)
        ledger.ray["workers"] = self.n
        for k, (stats, _, alarms) in enumerate(results):
            answers[k] += stats.get("succeeded", 0)
            self._alarms(k, alarms, 0)
        for stats, stages, _ in results:
            part = GenerationStats()
            for k, v in stats.items():
                setattr(part, k, v)
            total.add(part)
            for name, spend in stages.items():
                ledger.add(name, StageSpend(**spend))
        total.total = count
        stops = {s.get("stop_reason") for s, _, _ in results} - {None}
        total.stop_reason = next((r for r in STOP_ORDER if r in stops), None)
        if ledger.max_cost_usd is not None and total.stop_reason == "budget":
            ledger.exhausted = True
        return total

    def _wait(self, refs: list[Any], live: GenerationStats) -> list[Any]:
        """Every worker's result. When one fails (its process died, a fatal API error), the
        others are asked to stop: what they have in flight is answered and stored, then the
        first error is raised."""
        pending = list(refs)
        error: BaseException | None = None
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                try:
                    self.ray.get(ref)
                except Exception as e:  # noqa: BLE001 - raised once the others settle
                    if error is None:
                        error = e
                        self.stop()
            polls = [a.stats.remote(seen) for a, seen in zip(self.actors, self.alarms_seen,
                                                               strict=True)]
            answered, _ = self.ray.wait(polls, num_returns=len(polls), timeout=2.0)
            snapshot = []
            for k, ref in enumerate(polls):
                if ref not in answered:
                    continue
                try:
                    stats, alarms = self.ray.get(ref)
                except Exception:  # noqa: BLE001 - a dead worker has no stats; _wait raises
                    continue
                snapshot.append(stats)
                self._alarms(k, alarms, self.alarms_seen[k])
            for name in (*COUNTERS, *GAUGES):
                setattr(live, name, sum(s.get(name, 0) for s in snapshot if s))
        if error is not None:
            raise error
        return list(self.ray.get(refs))

    def _alarms(self, k: int, alarms: list[Alarm], start: int) -> None:
        """Pass on the alarms of worker ``k`` not passed on yet (``alarms`` are its alarms
        from the ``start``-th on); under --stop-on-collapse an alarm stops every worker, as
        it stops one process."""
        unseen = alarms[max(0, self.alarms_seen[k] - start):]
        self.alarms_seen[k] = max(self.alarms_seen[k], start + len(alarms))
        for alarm in unseen:
            if self.on_alarm is not None:
                self.on_alarm(alarm)
        if unseen and self.stop_on_collapse:
            self.stop()

    def stop(self) -> None:
        """No new requests on any worker; those in flight finish and are stored."""
        for a in self.actors:
            a.stop.remote()


def _unwrapped(e: BaseException) -> BaseException:
    from textbook_gen.curate.distributed import _unwrap

    inner = _unwrap(e)
    if isinstance(inner, TextbookGenError):
        return inner
    if type(e).__name__ in ("ActorDiedError", "RayActorError", "ActorUnavailableError"):
        return TextbookGenError(
            "a Ray worker died during generation (its node was lost or it was killed). Every "
            "answer it had stored is kept; run the same command again to go on")
    return e


def check_ray_options(batch: bool, ray: str | None) -> None:
    if ray is not None and batch:
        raise ConfigError("--ray with --batch: a batch is one submission to the provider;"
                          " there is nothing to spread over a cluster. Use one or the other")

