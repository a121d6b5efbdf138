"""Batch mode: the OpenAI Batch API and Anthropic Message Batches (half price, hours not seconds).

The other way through the paid middle of the flow. Each batch is recorded in the store
*before* the provider hears of it, with our own id; the provider's id is recorded as soon as
it exists. A crash between the two is recovered by finding the batch by our id, which the
batch itself carries (OpenAI: its metadata; Anthropic, whose batches have none: every
request's ``custom_id`` begins with it), instead of submitting again. Results map
back by ``custom_id`` (the request's content hash); what an expired batch did not finish is
resubmitted, and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
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
# how far before our record a batch's creation may be and still be ours (the local clock
# ahead of the provider's): a bound on the listing scanned, not how a batch is recognised
CLOCK_SLACK_S = 86_400.0
UNDECIDED = "?"  # find: a batch that may be ours has not ended; its custom_ids are not readable yet
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

    async def find(self, our_id: str, created_at: float, size: int,
                   known: set[str]) -> str | None:
        """The provider's id of the batch submitted as ``our_id``, recognised by an identity
        it carries; None when it was never submitted; ``UNDECIDED`` when a batch that may be
        it cannot be told yet. ``known``: provider ids of batches this store has recorded."""
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

    async def find(self, our_id: str, created_at: float, size: int,
                   known: set[str]) -> str | None:
        async for b in self.client.batches.list(limit=100):  # newest first
            if (b.metadata or {}).get("textbook_gen_batch") == our_id:
                return str(b.id)
            if b.created_at < created_at - CLOCK_SLACK_S:
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
        # Message Batches carry no metadata: each custom_id carries our batch id
        tagged = [{**x, "custom_id": _tagged(our_id, x["custom_id"])} for x in lines]
        b = await self.client.messages.batches.create(requests=tagged)
        return str(b.id)

    async def find(self, our_id: str, created_at: float, size: int,
                   known: set[str]) -> str | None:
        """Ours is the batch whose results' custom_ids carry our id. Only an ended batch
        has readable results, so a batch of our size that has not ended (and is not one of
        ours already recorded) leaves the answer undecided until it ends."""
        undecided = False
        async for b in self.client.messages.batches.list(limit=100):  # newest first
            if b.created_at.timestamp() < created_at - CLOCK_SLACK_S:
                break
            if b.id in known or sum(b.request_counts.model_dump().values()) != size:
                continue  # a batch's size is its own from creation: a cheap first sieve
            if b.processing_status != "ended":
                undecided = True
                continue
            async for row in await self.client.messages.batches.results(b.id):
                if _batch_of(row.custom_id) == _tag(our_id):
                    return str(b.id)
                break  # every row of a batch carries the same batch id
        return UNDECIDED if undecided else None

    async def poll(self, remote_id: str) -> RemoteState:
        b = await self.client.messages.batches.retrieve(remote_id)
        return RemoteState(b.processing_status == "ended", b.processing_status,
                           b.request_counts.model_dump())

    async def results(self, remote_id: str) -> AsyncIterator[Result]:
        from textbook_gen.providers.anthropic import parse_message

        async for row in await self.client.messages.batches.results(remote_id):
            result, key = row.result, _request_key(row.custom_id)
            if result.type == "succeeded":
                try:
                    yield key, parse_message(result.message.model_dump())
                except ProviderError as e:
                    yield key, e
            elif result.type == "errored":
                yield key, ProviderError(f"batch request errored: {result.error}",
                                         kind="batch_errored")
            else:  # expired, canceled: not processed, resubmit
                yield key, None


def _tag(our_id: str) -> str:
    return our_id.removeprefix("tbg-")


def _tagged(our_id: str, key: str) -> str:
    """An Anthropic custom_id (at most 64 of ``[a-zA-Z0-9_-]``) that carries our batch id and
    the whole request key: the key's sha256 bytes in base64url take 43 characters."""
    packed = base64.urlsafe_b64encode(bytes.fromhex(key)).rstrip(b"=").decode()
    return f"{_tag(our_id)}-{packed}"


def _batch_of(custom_id: str) -> str | None:
    tag, sep, packed = custom_id.partition("-")
    return tag if sep and len(packed) == 43 else None


def _request_key(custom_id: str) -> str:
    """The request key a custom_id carries (one sent before custom_ids were tagged is the
    key itself)."""
    if _batch_of(custom_id) is None:
        return custom_id
    try:
        return base64.urlsafe_b64decode(custom_id.partition("-")[2] + "=").hex()
    except ValueError:
        return custom_id


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
            freed = await self._recover()  # a batch that may be ours has ended since
            await self._submit([requests[k] for k in freed if k in requests])
            active = self.store.batches(("submitted",))
            if not active and not self.store.batches(("preparing",)):
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
            if self.store.batches(ACTIVE):
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

    async def _recover(self) -> list[str]:
        """A batch recorded but without a provider id may or may not have been submitted:
        found by the id it carries, it is collected; known never submitted, it is marked so
        and its request keys are returned (to submit); undecided, it stays as it is and
        its requests wait (the run polls until it can tell)."""
        freed: list[str] = []
        known = {b["remote_id"] for b in self.store.batches() if b["remote_id"]}
        for b in self.store.batches(("preparing",)):
            try:
                remote = await self.backend.find(b["id"], b["created_at"], len(b["keys"]),
                                                 known)
            except ProviderError:
                raise
            except Exception as e:  # noqa: BLE001 - SDK errors of either provider
                raise ProviderError(
                    f"batch {b['id']} was being submitted when the last run stopped, and the"
                    f" provider's batch list could not be read to find it ({_cause(e)});"
                    " it is not submitted again until it can be checked: run the same"
                    " command again"
                ) from None
            if remote == UNDECIDED:
                continue
            if remote:
                self.store.update_batch(b["id"], status="submitted", remote_id=remote,
                                        detail="recovered after a crash")
            else:
                self.store.update_batch(b["id"], status="failed", detail="never submitted")
                freed.extend(b["keys"])
        return freed

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
        try:
            state = await self.backend.poll(b["remote_id"])
        except ProviderError:
            raise
        except Exception as e:  # noqa: BLE001 - SDK errors of either provider
            raise ProviderError(
                f"cannot check batch {b['remote_id']} ({_cause(e)}). The batch goes on at the"
                " provider and its id is stored: run the same command again to collect it",
                kind="connection") from None
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
                                       cost_usd=(cost or 0.0) if self.price is not None else None,
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


def _cause(e: Exception) -> str:
    """One line saying why an SDK call failed: the server's status and message, or the
    connection's failure and the URL it was for."""
    status = getattr(e, "status_code", None)
    if status is not None:
        return sdk_error_message(e)
    request = getattr(e, "request", None)
    url = f" to {request.url}" if request is not None else ""
    return f"{type(e).__name__}{url}: {e.__cause__ or e}"


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
