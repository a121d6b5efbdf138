"""The generation engine: requests in, stored responses out; the paid middle of the flow.

Async workers (``concurrency`` of them) pull work lazily, skip what the store already has,
wait for rate-limit room and budget, call a provider with retries, and write each answer to
the store, which commits in groups (<= 50 ms). Memory follows work in flight, not run size.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from textbook_gen.errors import BudgetExceeded, FatalProviderError, ProviderError
from textbook_gen.providers.base import Provider, Request, Response
from textbook_gen.ratelimit import RateLimiter
from textbook_gen.spec import EngineSettings
from textbook_gen.store import RunStore
from textbook_gen.tokens import ModelPrice, estimate_input_tokens

MAX_BACKOFF = 60.0


@dataclass(frozen=True, slots=True)
class WorkItem:
    job_id: str
    request: Request


@dataclass
class EngineStats:
    """Live counters; the CLI reads them for the progress display."""

    total: int = 0
    done: int = 0  # jobs finished this run, from the store or the provider
    cached: int = 0  # answered from the store: nothing sent
    sent: int = 0  # HTTP attempts, retries included
    succeeded: int = 0
    failed: int = 0
    truncated: int = 0
    refused: int = 0
    retries: int = 0
    in_flight: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0  # spent this run
    cost_known: bool = True
    started: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None  # None | interrupted | budget | fatal

    @property
    def projected_cost(self) -> float | None:
        """Spend so far scaled to the jobs still to send (cached ones cost nothing)."""
        paid = self.done - self.cached
        if not self.cost_known:
            return None
        if paid <= 0:
            return self.cost_usd
        return self.cost_usd * (self.total - self.cached) / paid


class Engine:
    def __init__(
        self,
        providers: list[Provider],
        store: RunStore,
        settings: EngineSettings,
        price: ModelPrice | None,
        *,
        retry_base_delay: float = 1.0,
        rate_window: float = 60.0,
    ):
        if not providers:
            raise ValueError("at least one provider")
        self.providers = providers
        self._in_flight = [0] * len(providers)
        self.store = store
        self.settings = settings
        self.price = price
        self.retry_base_delay = retry_base_delay
        self.limiter = RateLimiter(
            rpm=settings.rpm, tpm=settings.tpm, input_tpm=settings.input_tpm,
            output_tpm=settings.output_tpm, window=rate_window,
        )
        self.stats = EngineStats(cost_known=price is not None)
        self._reserved_cost = 0.0
        self._reserved_tokens = 0
        self._stopping = False
        self._fatal: FatalProviderError | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- control
    def request_stop(self, reason: str = "interrupted") -> None:
        """No new requests; those in flight finish and are stored."""
        if not self._stopping:
            self._stopping = True
            self.stats.stop_reason = self.stats.stop_reason or reason

    def abort(self) -> None:
        """Stop now: cancel requests in flight. Everything already stored stays."""
        self.request_stop()
        for t in self._tasks:
            t.cancel()

    # -- running
    async def run(self, items: Iterable[WorkItem], total: int) -> EngineStats:
        self.stats.total = total
        source: Iterator[WorkItem] = iter(items)
        committer = asyncio.create_task(self._commit_loop())
        self._tasks = [
            asyncio.create_task(self._worker(source)) for _ in range(self.settings.concurrency)
        ]
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            committer.cancel()
            self.store.commit()
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    async def _commit_loop(self) -> None:
        interval = self.store.commit_interval
        while True:
            await asyncio.sleep(interval)
            self.store.commit()

    async def _worker(self, source: Iterator[WorkItem]) -> None:
        while not self._stopping:
            item = next(source, None)
            if item is None:
                return
            await self.process(item.job_id, item.request)

    async def process(self, job_id: str, req: Request) -> None:
        """Bring one job to an end state in the store: answered, or failed with a reason."""
        stored = self.store.get_response(req.key)
        if stored is not None and stored.status == "ok":
            retry = self._truncation_retry(req, stored.finish_reason)
            if retry is not None:
                return await self.process(job_id, retry)
            self.store.link_job(job_id, req.key)
            self.stats.cached += 1
            self.stats.done += 1
            return
        input_estimate = estimate_input_tokens(req.messages)
        max_out = int(req.param.get("max_tokens", 0))
        projected = self._reserve(input_estimate, max_out)
        if projected is None:
            return
        self.stats.in_flight += 1
        try:
            await self.limiter.acquire(input_estimate, max_out)
            resp, attempts = await self._call(req)
        except FatalProviderError as e:
            self._fatal = self._fatal or e
            self.request_stop("fatal")
            self.store.put_failure(req, kind=e.kind, error=str(e), attempts=1)
            self.store.link_job(job_id, req.key)
            return
        except ProviderError as e:
            self.store.put_failure(req, kind=e.kind, error=str(e), attempts=getattr(e, "attempts", 1))
            self.store.link_job(job_id, req.key)
            self.stats.failed += 1
            self.stats.done += 1
            return
        finally:
            self.stats.in_flight -= 1
            self._reserved_cost -= projected
            self._reserved_tokens -= input_estimate + max_out
        cost = self.price.cost(resp.input_tokens, resp.output_tokens) if self.price else 0.0
        self.store.put_response(req, resp, cost_usd=cost, attempts=attempts)
        self.store.link_job(job_id, req.key)
        self._account(resp, cost)
        retry = self._truncation_retry(req, resp.finish_reason)
        if retry is not None:
            self.stats.done -= 1  # the job is not over: it continues with the larger request
            await self.process(job_id, retry)

    def _account(self, resp: Response, cost: float) -> None:
        s = self.stats
        s.done += 1
        s.succeeded += 1
        s.input_tokens += resp.input_tokens
        s.output_tokens += resp.output_tokens
        s.cost_usd += cost
        s.truncated += resp.finish_reason == "length"
        s.refused += resp.finish_reason in ("refusal", "content_filter")
        if resp.rate_limits is not None:
            rl = resp.rate_limits
            self.limiter.tighten(rpm=rl.limit_requests, tpm=rl.limit_tokens,
                                 input_tpm=rl.limit_input_tokens,
                                 output_tpm=rl.limit_output_tokens)
            if rl.reset_s:
                self.limiter.hold(rl.reset_s)

    def _truncation_retry(self, req: Request, finish_reason: str | None) -> Request | None:
        """A truncated answer is never re-sent as it was; optionally once with twice the room."""
        if finish_reason != "length" or not self.settings.retry_truncated:
            return None
        params = req.param
        if params.get("truncation_retry"):
            return None
        params["max_tokens"] = int(params["max_tokens"]) * 2
        params["truncation_retry"] = 1
        return Request.build(req.provider, req.model, list(req.messages), params)

    def _reserve(self, input_estimate: int, max_out: int) -> float | None:
        """Hold budget for a request's worst case and return its cost; None (and stop the run)
        if it would cross a cap."""
        s, cfg = self.stats, self.settings
        projected = self.price.cost(input_estimate, max_out) if self.price else 0.0
        if cfg.max_cost_usd is not None and (
            s.cost_usd + self._reserved_cost + projected > cfg.max_cost_usd
        ):
            self.request_stop("budget")
            return None
        tokens = input_estimate + max_out
        if cfg.max_total_tokens is not None and (
            s.input_tokens + s.output_tokens + self._reserved_tokens + tokens > cfg.max_total_tokens
        ):
            self.request_stop("budget")
            return None
        self._reserved_cost += projected
        self._reserved_tokens += tokens
        return projected

    def _pick_provider(self) -> int:
        """The endpoint with the fewest requests in flight (round-robin among equals)."""
        best = min(self._in_flight)
        return self._in_flight.index(best)

    async def _call(self, req: Request) -> tuple[Response, int]:
        for attempt in itertools.count(1):
            i = self._pick_provider()
            self._in_flight[i] += 1
            self.stats.sent += 1
            try:
                return await self.providers[i].complete(req), attempt
            except FatalProviderError:
                raise
            except ProviderError as e:
                if not e.retryable or attempt > self.settings.max_retries:
                    e.attempts = attempt  # type: ignore[attr-defined]
                    raise
                self.stats.retries += 1
                await asyncio.sleep(self._backoff(attempt, e.retry_after))
            finally:
                self._in_flight[i] -= 1
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff, never shorter than the server asked for."""
        jittered = random.uniform(0, min(MAX_BACKOFF, self.retry_base_delay * 2 ** (attempt - 1)))
        if retry_after is not None:
            return min(max(retry_after, jittered * 0.1), 10 * MAX_BACKOFF)
        return jittered

    async def aclose(self) -> None:
        for p in self.providers:
            await p.aclose()


def budget_message(stats: EngineStats, settings: EngineSettings) -> BudgetExceeded:
    caps = []
    if settings.max_cost_usd is not None:
        caps.append(f"--max-cost {settings.max_cost_usd}")
    if settings.max_total_tokens is not None:
        caps.append(f"--max-tokens {settings.max_total_tokens}")
    return BudgetExceeded(
        f"budget reached ({' / '.join(caps)}): spent ${stats.cost_usd:.4f} this run,"
        f" {stats.done}/{stats.total} jobs done. Everything received is stored; raise the cap"
        " and run the same command again to continue."
    )
