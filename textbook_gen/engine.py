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
import time
from collections.abc import Callable, Iterable, Iterator

from textbook_gen.errors import FatalProviderError, ProviderError
from textbook_gen.generator import GenerationStats, WorkItem
from textbook_gen.ledger import Ledger
from textbook_gen.providers.base import (
    Provider,
    Request,
    Response,
    same_model,
    with_answer_start,
)
from textbook_gen.ratelimit import RateLimiter
from textbook_gen.spec import EngineSettings
from textbook_gen.store import RunStore
from textbook_gen.tokens import ModelPrice, estimate_input_tokens
from textbook_gen.watch import Alarm, Watch

MAX_BACKOFF = 60.0
# the circuit breaker: this many connection failures in a row, over at least
# BREAKER_PATIENCE base retry delays (30 s at the default delay; 10x that once the endpoint
# has answered in this run), stop the run
BREAKER_FAILURES = 8
BREAKER_PATIENCE = 30.0


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
        on_notice: Callable[[str], None] | None = None,
        give_up_after: int | None = None,
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
        self.on_notice = on_notice
        self.give_up_after = give_up_after  # a stage whose first N jobs all fail stops
        self._pending: dict[str, asyncio.Future[str | None]] = {}  # request key -> its outcome
        self._streak: list[float] = []  # times of connection failures since the last answer
        self._reached = False
        self._model_warned = False
        self._wake = asyncio.Event()

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
        self._wake.set()  # jobs sleeping out a backoff end now

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
            flushed = await asyncio.get_running_loop().run_in_executor(None, self._flush)
            if flushed is not None:
                self._fail(flushed)
        for r in results:
            if isinstance(r, Exception):  # a worker ended other than by its own handling
                self._fail(r)
        if self._error is not None:
            raise self._error
        return self.stats

    def _flush(self) -> Exception | None:
        """Commit what is queued (in a thread: it waits on the disk); the error, if any."""
        try:
            self.store.commit()
        except Exception as e:  # noqa: BLE001 - raised by run() as the run's error
            return e
        return None

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
        """Bring one job to an end state in the store: answered, or failed with a reason.

        The one paid path: look the request up in the store, join an identical request
        already in flight, then for each attempt reserve the worst case in the ledger, wait
        for rate-limit room, send, and settle what the provider billed (whatever became of
        the text); the answer or the failure is stored with what it cost."""
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
        joined = self._pending.get(req.key)
        if joined is not None:  # the same request is in flight for another job: its answer
            theirs = await asyncio.shield(joined)
            if theirs == "failed":  # ... or its failure, without paying for it again
                await self._durable(self.store.link_job(job_id, req.key))
                self.stats.failed += 1
                self.stats.done += 1
                return
            if theirs == "ok" or not self._stopping:
                return await self.process(job_id, req, kind, cell)
            return
        outcome: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[req.key] = outcome
        self.stats.in_flight += 1
        result: str | None = None
        try:
            result = await self._send(job_id, req, kind, cell)
        finally:
            self.stats.in_flight -= 1
            del self._pending[req.key]
            outcome.set_result(result)
        if result == "truncated":
            retry = self._truncation_retry(req, "length")
            assert retry is not None
            self.stats.done -= 1  # the job is not over: it continues with the larger request
            await self.process(job_id, retry, kind, cell)

    async def _send(self, job_id: str, req: Request, kind: str, cell: str) -> str | None:
        """Attempts until an answer, a final failure or a stop: "ok", "truncated" (ok, to be
        sent again with more room), "failed", or None (stopped before an end state)."""
        input_estimate = estimate_input_tokens(req.messages)
        max_out = int(req.param.get("max_tokens", 0))
        cost, cost_known, error = 0.0, self.price is not None, None
        for attempt in itertools.count(1):
            if attempt > 1 and self._stopping and self._error is not None:
                break  # the run is stopping on an error: no more attempts
            hold = self.ledger.reserve(self.stage, self.price, input_estimate, max_out,
                                       model=req.model)
            if hold is None:
                self.request_stop("budget")
                break
            try:
                await self.limiter.acquire(
                    self.ledger.expected_input(req.model, input_estimate), max_out)
                resp = await self._attempt(req)
            except ProviderError as e:
                if e.usage is not None:  # billed, though the answer is unusable
                    cost += self.ledger.settle(hold, *e.usage)
                else:
                    self.ledger.release(hold)
                error = e
                if isinstance(e, FatalProviderError):
                    self._fail(e)
                    break
                if not e.retryable or attempt > self.settings.max_retries or self._stopping:
                    break
                self.stats.retries += 1
                await self._pause(self._backoff(attempt, e.retry_after))
                continue
            except BaseException:
                self.ledger.release(hold)
                raise
            cost += self.ledger.settle(hold, resp.input_tokens, resp.output_tokens)
            resp = with_answer_start(req, resp)
            await self._durable(self.store.put_response(
                req, resp, cost_usd=cost if cost_known else None, attempts=attempt,
                job_id=job_id))
            self._account(resp, cost)
            if self._truncation_retry(req, resp.finish_reason) is not None:
                return "truncated"
            if self.watch is not None:  # it judges the model's words, not the answer start
                for alarm in self.watch.add(kind, cell, resp.text[len(req.answer_start or ""):]):
                    if self.on_alarm is not None:
                        self.on_alarm(alarm)
                    if self.watch.s.stop:
                        self.request_stop("collapse")
            return "ok"
        if error is None:
            return None  # stopped before its first attempt: the job waits for the next run
        # failed for good, or stopped between attempts (the budget, another job's fatal
        # error): a failure with the last attempt's reason and what the attempts were billed;
        # a rerun tries it again
        self.stats.cost_usd += cost
        fatal = isinstance(error, FatalProviderError)
        if not fatal:
            self.stats.failed += 1
            self.stats.done += 1
            self._note_failure(error)
        await self._durable(self.store.put_failure(
            req, kind=error.kind, error=str(error), attempts=attempt, job_id=job_id,
            cost_usd=cost if cost_known else None))
        return "failed"

    async def _attempt(self, req: Request) -> Response:
        """One call to the endpoint with the fewest requests in flight; connection failures
        feed the circuit breaker."""
        i = self._pick_provider()
        self._in_flight[i] += 1
        self.stats.sent += 1
        try:
            resp = await self.providers[i].complete(req)
        except ProviderError as e:
            if e.kind == "connection":
                self._breaker(self.providers[i], e)
            elif e.status is not None:
                self._streak, self._reached = [], True  # the server answered
            raise
        finally:
            self._in_flight[i] -= 1
        self._streak = []
        self._reached = True
        if self.providers[i].endpoint is not None:  # a model in this process is what it is
            self._check_model(req, resp)
        return resp

    def _breaker(self, provider: Provider, e: ProviderError) -> None:
        """After a run of connection failures with no answer between them, stop sending: the
        endpoint is down, and waiting out every job's backoff only delays saying so."""
        now = time.monotonic()
        self._streak.append(now)
        span = now - self._streak[0]
        # a blip (a proxy restarting) lasts less than the run's patience; an endpoint that
        # never answered this run gets less patience than one that did
        patience = BREAKER_PATIENCE * self.retry_base_delay
        if self._reached:
            patience *= 10
        if len(self._streak) >= BREAKER_FAILURES and span >= patience:
            where = provider.endpoint or provider.name
            self._fail(FatalProviderError(
                f"cannot reach {where}: {len(self._streak)} connection attempts in a row failed"
                f" over {span:.0f} s with no answer (last: {e}). Nothing was lost; check that"
                " the server is up and the URL (--base-url, model.base_url) is right, then run"
                " the same command again to continue", kind="unreachable"))

    def _note_failure(self, error: ProviderError) -> None:
        """``give_up_after``: a stage whose first jobs all fail is stopped, naming why."""
        if (self.give_up_after is not None and self.stats.succeeded == 0
                and self.stats.failed >= self.give_up_after):
            self._fail(FatalProviderError(
                f"the {self.stage} stage's first {self.stats.failed} requests all failed and"
                f" none succeeded; the provider said: {error}", kind=f"{self.stage}_failing"))

    def _check_model(self, req: Request, resp: Response) -> None:
        """A server that answers as another model than the one asked is priced as the one
        asked (what the spec says); the user is told once."""
        if self._model_warned or not resp.model or same_model(req.model, resp.model):
            return
        self._model_warned = True
        if self.on_notice is not None:
            self.on_notice(f"warning: asked for model {req.model!r}, the server answered as"
                           f" {resp.model!r}; costs are computed at {req.model!r}'s price")

    async def _pause(self, seconds: float) -> None:
        """Sleep out a backoff; a run stopping on an error wakes it at once."""
        if self._error is not None:
            return
        sleep, wake = asyncio.ensure_future(asyncio.sleep(seconds)), asyncio.ensure_future(
            self._wake.wait())
        try:
            await asyncio.wait((sleep, wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            wake.cancel()

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

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff, never shorter than the server asked for."""
        jittered = random.uniform(0, min(MAX_BACKOFF, self.retry_base_delay * 2 ** (attempt - 1)))
        if retry_after is not None:
            return min(max(retry_after, jittered * 0.1), 10 * MAX_BACKOFF)
        return jittered

    async def aclose(self) -> None:
        for p in self.providers:
            await p.aclose()
