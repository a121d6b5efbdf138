"""Batch mode: the OpenAI Batch API and Anthropic Message Batches (half price, hours not seconds).

The other way through the paid middle of the flow. Each batch is recorded in the store
*before* the provider hears of it, with our own id; the provider's id is recorded as soon as
it exists. A crash between the two is recovered by finding the batch by our id (OpenAI
metadata; Anthropic by creation time and size) instead of submitting again. Results map
back by ``custom_id`` (the request's content hash); what an expired batch did not finish is
resubmitted, and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from textbook_gen.errors import FatalProviderError, ProviderError
from textbook_gen.generator import GenerationStats, WorkItem
from textbook_gen.ledger import Ledger, Reservation
from textbook_gen.providers.base import (
    Provider,
    Request,
    Response,
    sdk_error_message,
    status_error,
    with_answer_start,
)
from textbook_gen.store import RunStore
from textbook_gen.tokens import BATCH_DISCOUNT, ModelPrice, estimate_input_tokens

ACTIVE = ("preparing", "submitted")
MAX_SUBMISSIONS = 3  # a request no batch processed (expired, cancelled) is submitted at most this often


@dataclass(frozen=True)
class RemoteState:
    done: bool  # the provider will not process more of it
    status: str  # the provider's own word
    counts: dict[str, int]
    error: str | None = None  # why the provider failed the whole batch


Result = tuple[str, Response | ProviderError | None]  # None: not processed (expired, canceled)


class BatchBackend:
    """One provider's batch protocol. Subclasses implement the five calls."""

    max_requests: int
    max_bytes: int
    endpoint: str

    def __init__(self, provider: Any):
        self.provider = provider
        self.client = provider.client

    def line(self, req: Request) -> dict[str, Any]:
        raise NotImplementedError

    async def submit(self, our_id: str, lines: list[dict[str, Any]]) -> str:
        raise NotImplementedError

    async def find(self, our_id: str, created_at: float, size: int) -> str | None:
        raise NotImplementedError

    async def poll(self, remote_id: str) -> RemoteState:
        raise NotImplementedError

    def results(self, remote_id: str) -> AsyncIterator[Result]:
        raise NotImplementedError


class OpenAIBatches(BatchBackend):
    max_requests = 50_000
    max_bytes = 190 * 1024 * 1024  # the API's limit is 200 MB
    endpoint = "/v1/chat/completions"

    def line(self, req: Request) -> dict[str, Any]:
        return {"custom_id": req.key, "method": "POST", "url": self.endpoint,
                "body": self.provider.request_body(req)}

    async def submit(self, our_id: str, lines: list[dict[str, Any]]) -> str:
        data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()
        f = await self.client.files.create(file=(f"{our_id}.jsonl", data), purpose="batch")
        b = await self.client.batches.create(
            input_file_id=f.id, endpoint=self.endpoint, completion_window="24h",
            metadata={"textbook_gen_batch": our_id},
        )
        return str(b.id)

    async def find(self, our_id: str, created_at: float, size: int) -> str | None:
        async for b in self.client.batches.list(limit=100):
            if (b.metadata or {}).get("textbook_gen_batch") == our_id:
                return str(b.id)
            if b.created_at < created_at - 3600:
                break
        return None

    async def poll(self, remote_id: str) -> RemoteState:
        b = await self.client.batches.retrieve(remote_id)
        counts = b.request_counts.model_dump() if b.request_counts else {}
        error = None
        if b.status == "failed":
            errors = [e.message for e in ((b.errors.data or []) if b.errors else []) if e.message]
            error = "; ".join(errors)[:1000] or None
        return RemoteState(b.status in ("completed", "expired", "failed", "cancelled"),
                           b.status, counts, error)

    async def results(self, remote_id: str) -> AsyncIterator[Result]:
        from textbook_gen.providers.openai import parse_completion

        b = await self.client.batches.retrieve(remote_id)
        for file_id in (b.output_file_id, b.error_file_id):
            if not file_id:
                continue
            content = await self.client.files.content(file_id)
            for raw in content.text.splitlines():
                if not raw.strip():
                    continue
                row = json.loads(raw)
                yield row["custom_id"], _openai_row(row, parse_completion)


def _openai_row(row: dict[str, Any], parse: Callable[..., Response]) -> Response | ProviderError | None:
    resp, err = row.get("response"), row.get("error")
    if err and err.get("code") in ("batch_expired", "batch_cancelled"):
        return None
    if resp and resp.get("status_code") == 200:
        try:
            return parse(resp["body"])
        except ProviderError as e:
            return e
    status = (resp or {}).get("status_code") or 500
    body = (resp or {}).get("body") or {}
    message = (body.get("error") or err or {}).get("message", "batch request failed")
    error = status_error(status, f"HTTP {status}: {message}")
    return error if isinstance(error, ProviderError) else ProviderError(message)


class AnthropicBatches(BatchBackend):
    max_requests = 100_000
    max_bytes = 240 * 1024 * 1024  # the API's limit is 256 MB
    endpoint = "/v1/messages/batches"

    def line(self, req: Request) -> dict[str, Any]:
        return {"custom_id": req.key[:64], "params": self.provider.request_body(req)}

    async def submit(self, our_id: str, lines: list[dict[str, Any]]) -> str:
        b = await self.client.messages.batches.create(requests=lines)
        return str(b.id)

    async def find(self, our_id: str, created_at: float, size: int) -> str | None:
        # Message Batches carry no metadata: adopt a batch of our size created just after ours.
        async for b in self.client.messages.batches.list(limit=100):
            made = b.created_at.timestamp()
            total = sum(b.request_counts.model_dump().values())
            if created_at - 5 <= made <= created_at + 600 and total == size:
                return str(b.id)
        return None

    async def poll(self, remote_id: str) -> RemoteState:
        b = await self.client.messages.batches.retrieve(remote_id)
        return RemoteState(b.processing_status == "ended", b.processing_status,
                           b.request_counts.model_dump())

    async def results(self, remote_id: str) -> AsyncIterator[Result]:
        from textbook_gen.providers.anthropic import parse_message

        async for row in await self.client.messages.batches.results(remote_id):
            result = row.result
            if result.type == "succeeded":
                try:
                    yield row.custom_id, parse_message(result.message.model_dump())
                except ProviderError as e:
                    yield row.custom_id, e
            elif result.type == "errored":
                yield row.custom_id, ProviderError(f"batch request errored: {result.error}",
                                                   kind="batch_errored")
            else:  # expired, canceled: not processed, resubmit
                yield row.custom_id, None


BACKENDS: dict[str, type[BatchBackend]] = {"openai": OpenAIBatches, "anthropic": AnthropicBatches}


def backend_for(provider: Provider) -> BatchBackend:
    cls = BACKENDS.get(provider.name)
    if cls is None:
        from textbook_gen.errors import ConfigError

        raise ConfigError(f"the {provider.name} provider has no batch API; run without --batch")
    return cls(provider)


class BatchRunner:
    """Submit what is not stored, poll, collect, resubmit what expired; until all is stored.

    The batch ``Generator``: each request's worst case (at the batch discount) is reserved in
    the run's ledger when it is submitted and settled when its result is collected.
    """

    def __init__(self, backend: BatchBackend, store: RunStore, price: ModelPrice | None, *,
                 ledger: Ledger | None = None, poll_interval: float = 30.0,
                 max_requests: int | None = None, stage: str = "generate"):
        self.backend = backend
        self.store = store
        self.price = price
        self.ledger = ledger or Ledger()
        self.stage = stage
        self.poll_interval = poll_interval
        self.max_requests = min(max_requests or backend.max_requests, backend.max_requests)
        self.stats = GenerationStats(cost_known=price is not None)
        self._stop = False
        self._holds: dict[str, Reservation] = {}  # request key -> its reservation, this run

    def request_stop(self, reason: str = "interrupted") -> None:
        self._stop = True
        self.stats.stop_reason = self.stats.stop_reason or reason

    abort = request_stop

    async def run(self, items: Iterable[WorkItem], total: int) -> GenerationStats:
        self.stats.total = total
        await self._recover()
        requests: dict[str, Request] = {}
        for item in items:
            stored = self.store.get_response(item.request.key)
            if self.store.job_key(item.job_id) != item.request.key:
                self.store.link_job(item.job_id, item.request.key)
            if stored is not None and stored.status == "ok":
                self.stats.cached += 1
                self.stats.done += 1
            else:
                requests[item.request.key] = item.request
        self.store.commit()
        in_batches = {k for b in self.store.batches(ACTIVE) for k in b["keys"]}
        await self._submit([r for k, r in requests.items() if k not in in_batches])
        while not self._stop:
            active = self.store.batches(("submitted",))
            if not active:
                break
            for b in active:
                state = await self._poll(b)
                if not state.done:
                    continue
                if state.status == "failed":
                    self._fail_batch(b, requests, state)
                    continue
                missing = await self._collect(b, requests)
                await self._submit(self._resubmittable(missing))
            if self.store.batches(("submitted",)):
                await asyncio.sleep(self.poll_interval)
        return self.stats

    def _resubmittable(self, missing: list[Request]) -> list[Request]:
        """What a batch did not process goes again, up to MAX_SUBMISSIONS; then it fails."""
        submissions: dict[str, int] = {}
        for b in self.store.batches():
            for k in b["keys"]:
                submissions[k] = submissions.get(k, 0) + 1
        again = []
        for req in missing:
            n = submissions.get(req.key, 0)
            if n < MAX_SUBMISSIONS:
                again.append(req)
                continue
            self._release(req.key)  # failed for good: nothing more will be billed for it
            self.store.put_failure(req, kind="batch_expired",
                                   error=f"not processed by {n} batches in a row (expired or"
                                   " cancelled); run again to submit it once more", attempts=n)
            self.stats.failed += 1
            self.stats.done += 1
        return again

    async def _recover(self) -> None:
        """A batch recorded but without a provider id may or may not have been submitted."""
        for b in self.store.batches(("preparing",)):
            try:
                remote = await self.backend.find(b["id"], b["created_at"], len(b["keys"]))
            except ProviderError:
                raise
            except Exception as e:  # noqa: BLE001 - SDK errors of either provider
                raise ProviderError(
                    f"batch {b['id']} was being submitted when the last run stopped, and the"
                    f" provider's batch list could not be read to find it ({_sdk_error(e)});"
                    " it is not submitted again until it can be checked"
                ) from None
            if remote:
                self.store.update_batch(b["id"], status="submitted", remote_id=remote,
                                        detail="recovered after a crash")
            else:
                self.store.update_batch(b["id"], status="failed", detail="never submitted")

    async def _submit(self, pending: list[Request]) -> None:
        chunk: list[dict[str, Any]] = []
        size = 0
        for req in pending:
            if self._stop or self.ledger.exhausted or not self._affordable(req):
                break
            line = self.backend.line(req)
            n = len(json.dumps(line, ensure_ascii=False).encode()) + 1
            if chunk and (len(chunk) >= self.max_requests or size + n > self.backend.max_bytes):
                await self._submit_chunk(chunk)
                chunk, size = [], 0
            self.store.put_request(req)
            chunk.append(line)
            size += n
        if chunk:
            await self._submit_chunk(chunk)

    def _affordable(self, req: Request) -> bool:
        """Batch spend is committed at submission: hold each request's worst case in the ledger."""
        if req.key in self._holds:
            return True
        hold = self.ledger.reserve(self.stage, self.price, estimate_input_tokens(req.messages),
                                   int(req.param.get("max_tokens", 0)), discount=BATCH_DISCOUNT,
                                   model=req.model)
        if hold is None:
            self.stats.stop_reason = self.stats.stop_reason or "budget"
            return False
        self._holds[req.key] = hold
        return True

    async def _submit_chunk(self, lines: list[dict[str, Any]]) -> None:
        our_id = f"tbg-{uuid.uuid4().hex[:16]}"
        keys = [x["custom_id"] for x in lines]
        self.store.add_batch(our_id, self.backend.provider.name, keys, self.backend.endpoint)
        try:
            remote = await self.backend.submit(our_id, lines)
        except Exception as e:  # noqa: BLE001 - SDK errors of either provider: map, record, raise
            error = _sdk_error(e)
            if isinstance(error, ProviderError) and not isinstance(error, FatalProviderError):
                # we cannot tell whether it reached the provider: leave it for recovery
                self.store.update_batch(our_id, status="preparing", detail=str(error))
            else:
                self.store.update_batch(our_id, status="failed", detail=str(error))
            raise error from None
        self.store.update_batch(our_id, status="submitted", remote_id=remote)
        self.stats.sent += 1

    async def _poll(self, b: dict[str, Any]) -> RemoteState:
        state = await self.backend.poll(b["remote_id"])
        self.store.update_batch(b["id"], status="submitted", detail=json.dumps(
            {"status": state.status, "counts": state.counts}))
        return state

    async def _collect(self, b: dict[str, Any], requests: dict[str, Request]) -> list[Request]:
        """Store every result; return the requests the batch did not process."""
        seen: set[str] = set()
        async for custom_id, outcome in self.backend.results(b["remote_id"]):
            req = requests.get(custom_id) or self.store.get_request(custom_id)
            if req is None:
                continue
            if outcome is None:
                continue
            seen.add(custom_id)
            if isinstance(outcome, ProviderError):
                # an answer billed but unusable (empty) is charged what it was billed
                cost = self._charge(custom_id, outcome.usage) if outcome.usage else None
                if cost is None:
                    self._release(custom_id)
                self.store.put_failure(req, kind=outcome.kind, error=str(outcome), attempts=1,
                                       cost_usd=cost if self.price is not None else None,
                                       usage=outcome.usage or (0, 0))
                self.stats.cost_usd += cost or 0.0
                self.stats.failed += 1
            else:
                outcome = with_answer_start(req, outcome)
                cost = self._charge(custom_id, (outcome.input_tokens, outcome.output_tokens))
                self.store.put_response(req, outcome,
                                        cost_usd=cost if self.price is not None else None,
                                        attempts=1, batch_id=b["id"])
                self.stats.succeeded += 1
                self.stats.input_tokens += outcome.input_tokens
                self.stats.output_tokens += outcome.output_tokens
                self.stats.cost_usd += cost
                self.stats.truncated += outcome.finish_reason == "length"
            self.stats.done += 1
        self.store.update_batch(b["id"], status="collected")  # commits the results with it
        missing = []
        for key in b["keys"]:
            if key in seen:
                continue
            req = requests.get(key) or self.store.get_request(key)
            if req is not None:
                missing.append(req)
        return missing

    def _charge(self, key: str, usage: tuple[int, int]) -> float:
        """Settle what the provider billed for a request against its hold (or, submitted by
        an earlier run, with none); return the cost."""
        hold = self._holds.pop(key, None)
        if hold is not None:
            return self.ledger.settle(hold, *usage)
        return self.ledger.account(self.stage, self.price, *usage, discount=BATCH_DISCOUNT)

    def _release(self, key: str) -> None:
        """A request that will not be answered: lift its hold in the ledger."""
        hold = self._holds.pop(key, None)
        if hold is not None:
            self.ledger.release(hold)

    def _fail_batch(self, b: dict[str, Any], requests: dict[str, Request],
                    state: RemoteState) -> None:
        """The provider rejected the whole batch (status ``failed``, e.g. a validation error):
        its requests fail with the provider's reason and are not submitted again this run."""
        detail = state.error or f"the provider marked batch {b['remote_id']} as failed"
        for key in b["keys"]:
            req = requests.get(key) or self.store.get_request(key)
            self._release(key)
            if req is None:
                continue
            self.store.put_failure(req, kind="batch_failed", error=detail, attempts=1)
            self.stats.failed += 1
            self.stats.done += 1
        self.store.update_batch(b["id"], status="failed", detail=json.dumps(
            {"status": state.status, "counts": state.counts, "error": detail}))

    async def aclose(self) -> None:
        await self.backend.provider.aclose()


def _sdk_error(e: Exception) -> Exception:
    status = getattr(e, "status_code", None)
    if status is not None:
        return status_error(status, sdk_error_message(e), getattr(e, "response", None) and
                            e.response.headers)  # type: ignore[attr-defined]
    if isinstance(e, ProviderError):
        return e
    return ProviderError(f"batch submission failed: {e}", retryable=True, kind="connection")


def describe_batches(store: RunStore) -> list[dict[str, Any]]:
    """The batches of a run with what the last poll said, for ``textbook-gen batches``."""
    rows = []
    for b in store.batches():
        detail: dict[str, Any] = {}
        if b["detail"]:
            try:
                detail = json.loads(b["detail"])
            except ValueError:
                detail = {"note": b["detail"]}
        rows.append({"id": b["id"], "provider": b["provider"], "remote_id": b["remote_id"],
                     "state": b["status"], "requests": len(b["keys"]),
                     "remote_status": detail.get("status", detail.get("note", "")),
                     "counts": detail.get("counts", {}),
                     "updated": time.strftime("%Y-%m-%d %H:%M:%S",
                                              time.localtime(b["updated_at"]))})
    return rows
