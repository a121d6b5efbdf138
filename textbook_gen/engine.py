"""The generation engine: requests in, stored responses out; the live ``Generator``.

Async workers (``concurrency`` of them) pull work lazily, skip what the store already has,
reserve the worst case in the run's ledger, wait for rate-limit room, call a provider with
retries, and wait until the answer is durable in the store before taking the next job: a
crash loses at most the answers of the ``concurrency`` requests in flight. An exception
that is not the job's own (a template error, a store that cannot be written) stops the run
and is raised. Memory follows work in flight, not run size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import random
from collections.abc import Callable, Iterable, Iterator

from textbook_gen.errors import FatalProviderError, ProviderError
from textbook_gen.generator import GenerationStats, WorkItem
from textbook_gen.ledger import Ledger
from textbook_gen.providers.base import Provider, Request, Response, with_answer_start
from textbook_gen.ratelimit import RateLimiter
from textbook_gen.spec import EngineSettings
from textbook_gen.store import RunStore
from textbook_gen.tokens import ModelPrice, estimate_input_tokens
from textbook_gen.watch import Alarm, Watch

MAX_BACKOFF = 60.0


class Engine:
    def __init__(
        self,
        providers: list[Provider],
        store: RunStore,
        settings: EngineSettings,
        price: ModelPrice | None,
        *,
        ledger: Ledger | None = None,
        stage: str = "generate",
        watch: Watch | None = None,
        on_alarm: Callable[[Alarm], None] | None = None,
        retry_base_delay: float = 1.0,
        rate_window: float = 60.0,
        limit_share: int = 1,
    ):
        if not providers:
            raise ValueError("at least one provider")
        self.providers = providers
        for p in providers:
            p.on_token = self._on_token
        self._in_flight = [0] * len(providers)
        self.store = store
        self.settings = settings
        self.price = price
        self.retry_base_delay = retry_base_delay
        self.limiter = RateLimiter(
            rpm=settings.rpm, tpm=settings.tpm, input_tpm=settings.input_tpm,
            output_tpm=settings.output_tpm, window=rate_window, share=limit_share,
        )
        self.ledger = ledger or Ledger(settings.max_cost_usd, settings.max_total_tokens)
        self.stage = stage
        self.watch = watch
        self.on_alarm = on_alarm
        self.stats = GenerationStats(cost_known=price is not None)
        self._stopping = False
        self._error: Exception | None = None  # the first error that stopped the run
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

    def _fail(self, error: Exception) -> None:
        """An error that is not one job's own: stop the run and raise it at the end."""
        self._error = self._error or error
        self.request_stop("fatal")

    # -- running
    async def run(self, items: Iterable[WorkItem], total: int) -> GenerationStats:
        self.stats.total = total
        source: Iterator[WorkItem] = iter(items)
        self._tasks = [
            asyncio.create_task(self._worker(source)) for _ in range(self.settings.concurrency)
        ]
        try:
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self._flush)
        for r in results:
            if isinstance(r, Exception):  # a worker ended other than by its own handling
                self._fail(r)
        if self._error is not None:
            raise self._error
        return self.stats

    def _flush(self) -> None:
        try:
            self.store.commit()
        except Exception as e:  # noqa: BLE001 - raised by run() as the run's error
            self._fail(e)

    async def _worker(self, source: Iterator[WorkItem]) -> None:
        while not self._stopping:
            try:
                item = next(source, None)  # renders the job's prompt: may raise
                if item is None:
                    return
                await self.process(item.job_id, item.request, item.kind, item.cell)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - not a job's end state: stops the run
                self._fail(e)
                return

    @staticmethod
    async def _durable(fut: concurrent.futures.Future[None]) -> None:
        await asyncio.wrap_future(fut)

    async def process(self, job_id: str, req: Request, kind: str = "", cell: str = "") -> None:
        """Bring one job to an end state in the store: answered, or failed with a reason."""
        stored = self.store.get_response(req.key)
        if stored is not None and stored.status == "ok":
            retry = self._truncation_retry(req, stored.finish_reason)
            if retry is not None:
                return await self.process(job_id, retry, kind, cell)
            if self.store.job_key(job_id) != req.key:  # a rerun writes nothing it need not
                await self._durable(self.store.link_job(job_id, req.key))
            self.stats.cached += 1
            self.stats.done += 1
            return
        input_estimate = estimate_input_tokens(req.messages)
        max_out = int(req.param.get("max_tokens", 0))
        hold = self.ledger.reserve(self.stage, self.price, input_estimate, max_out)
        if hold is None:
            self.request_stop("budget")
            return
        self.stats.in_flight += 1
        try:
            await self.limiter.acquire(input_estimate, max_out)
            resp, attempts = await self._call(req)
            resp = with_answer_start(req, resp)
        except ProviderError as e:
            self.ledger.release(hold)
            if isinstance(e, FatalProviderError):
                self._error = self._error or e
                self.request_stop("fatal")
            else:
                self.stats.failed += 1
                self.stats.done += 1
            await self._durable(self.store.put_failure(
                req, kind=e.kind, error=str(e), attempts=getattr(e, "attempts", 1), job_id=job_id))
            return
        finally:
            self.stats.in_flight -= 1
        cost = self.ledger.settle(hold, resp.input_tokens, resp.output_tokens)
        await self._durable(self.store.put_response(req, resp, cost_usd=cost, attempts=attempts,
                                                    job_id=job_id))
        self._account(resp, cost)
        retry = self._truncation_retry(req, resp.finish_reason)
        if retry is not None:
            self.stats.done -= 1  # the job is not over: it continues with the larger request
            await self.process(job_id, retry, kind, cell)
            return
        if self.watch is not None:  # it judges the model's words, not a template's answer start
            for alarm in self.watch.add(kind, cell, resp.text[len(req.answer_start or ""):]):
                if self.on_alarm is not None:
                    self.on_alarm(alarm)
                if self.watch.s.stop:
                    self.request_stop("collapse")

    def _on_token(self) -> None:
        """A streaming provider generated one more token (called from its thread)."""
        self.stats.streaming_tokens += 1

    def _account(self, resp: Response, cost: float) -> None:
        s = self.stats
        s.streaming_tokens = max(0, s.streaming_tokens - resp.output_tokens)
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
