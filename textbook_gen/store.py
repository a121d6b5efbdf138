"""The run store: one SQLite file (WAL) per run directory holding every request and response.

Writes go to one writer thread that commits them in groups as fast as the disk allows
(fsync'd: ``synchronous=FULL``); each write returns a future that resolves once it is
durable, and the engine waits on it before a worker takes its next job, so a crash loses
at most the answers of the requests in flight. A write that cannot be committed (disk
full, a lock held elsewhere) is saved to a rescue file beside the store, loaded by the
next run, and stops the run with a ``StoreError``. A request is known by its content
hash; a stored ``ok`` response is never paid for again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textbook_gen.errors import StoreError, TextbookGenError
from textbook_gen.providers.base import Request, Response
from textbook_gen.store_schema import MIGRATIONS, WRITES, as_written_now

__all__ = ["MIGRATIONS", "RunStore", "StoredResponse", "explain_sqlite"]
PARTITION_GLOB = "run-part-*.sqlite"  # a Ray worker's own store, beside run.sqlite
_ALL_RESPONSE_COLUMNS = ("key", "status", "text", "finish_reason", "input_tokens",
                         "output_tokens", "cost_usd", "provider", "model", "response_id",
                         "latency_s", "attempts", "error_kind", "error", "batch_id", "created_at",
                         "cost_known")
_COLUMN_DEFAULTS = {"cost_known": "1"}  # columns later migrations added, as older rows meant

Op = tuple[str, tuple[Any, ...]]
Queued = tuple[list[Op], "concurrent.futures.Future[None]"]  # one future for a job's writes


@dataclass(frozen=True)
class StoredResponse:
    key: str
    status: str
    text: str | None
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    provider: str | None
    model: str | None
    response_id: str | None
    latency_s: float | None
    attempts: int
    error_kind: str | None
    error: str | None
    batch_id: str | None
    created_at: float
    cost_known: int = 1  # 0: the model had no price; cost_usd is then not a cost

    @property
    def cost(self) -> float | None:
        """What the request cost (billed failures before its answer included); None if
        unknown."""
        return self.cost_usd if self.cost_known else None


_RESPONSE_COLUMNS = ", ".join(StoredResponse.__dataclass_fields__)


def explain_sqlite(path: Path, e: sqlite3.Error, *, busy_timeout: float) -> str:
    """What a SQLite error means for the user, in words that say what to do."""
    text = str(e)
    low = text.lower()
    if "full" in low:
        return f"cannot write {path}: the disk is full ({text}); free some space"
    if "locked" in low or "busy" in low:
        return (f"cannot write {path}: another process has held its lock for more than"
                f" {busy_timeout:g} s ({text}); close the program that has it open")
    if "readonly" in low or "read-only" in low or "permission" in low:
        return f"cannot write {path}: {text}; check the permissions of {path.parent}"
    if "disk i/o" in low:
        return f"cannot write {path}: disk I/O error ({text})"
    return f"{path}: {text}"


def _request_op(req: Request, now: float) -> Op:
    return ("request", (req.key, req.canonical_json(), now))


def _fail(fut: concurrent.futures.Future[None], error: BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # failed already
        fut.set_exception(error)


class _Writer(threading.Thread):
    """Commits queued operations in groups; resolves each operation's future once durable."""

    def __init__(self, store: RunStore):
        super().__init__(name="run-store-writer", daemon=True)
        self.store = store
        self.q: queue.Queue[Queued | None] = queue.Queue()
        self.groups = 0
        self.dead: StoreError | None = None  # why the writer stopped, if it did

    def run(self) -> None:
        try:
            db = self.store._connect()
        except BaseException as e:  # noqa: BLE001 - carried by every future and by commit()
            self._die(e)
            return
        try:
            while True:
                first = self.q.get()
                if first is None:
                    return
                group = [first]
                stop = False
                while True:
                    try:
                        nxt = self.q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    group.append(nxt)
                try:
                    self._commit(db, group)
                except BaseException as e:  # noqa: BLE001 - carried as above
                    self._die(e, group)
                    return
                if stop:
                    return
        finally:
            db.close()

    def _die(self, e: BaseException, group: list[Queued] | None = None) -> None:
        """The writer cannot go on: every write queued or still to come fails with the cause,
        so no caller waits forever on a future nobody will resolve."""
        error = StoreError(f"{self.store.path}: the run store's writer stopped"
                           f" ({type(e).__name__}: {e}); what was not committed is not stored."
                           " Then run the same command again")
        self.store._error = self.store._error or error
        self.dead = error
        pending = [fut for _, fut in group or []]
        while True:
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                pending.append(item[1])
        for fut in pending:
            _fail(fut, error)

    def _commit(self, db: sqlite3.Connection, group: list[Queued]) -> None:
        error = self._write(db, [op for ops, _ in group for op in ops])
        if error is None:
            self.groups += 1
            for _, fut in group:
                fut.set_result(None)
            return
        if isinstance(error, StoreError):  # SQLite refused the group: all of it was rescued
            for _, fut in group:
                fut.set_exception(error)
            return
        # a value SQLite cannot hold (an integer past 64 bits): only the writes that carry it
        # fail; the others of the group are committed, each job's on its own
        for ops, fut in group:
            alone = self._write(db, ops)
            if alone is None:
                fut.set_result(None)
                continue
            if not isinstance(alone, StoreError):
                alone = self.store._unstorable(ops, alone)
            self.store._error = self.store._error or alone
            fut.set_exception(alone)

    def _write(self, db: sqlite3.Connection, ops: list[Op]) -> Exception | None:
        """Commit ``ops`` in one transaction. None when durable; a ``StoreError`` when SQLite
        refused them (they are in the rescue file); any other exception: a value in them
        SQLite cannot take (nothing written, nothing rescued: replaying it would fail too)."""
        try:
            db.execute("BEGIN IMMEDIATE")
            for name, args in ops:
                db.execute(WRITES[name], args)
            db.execute("COMMIT")
            return None
        except Exception as e:  # noqa: BLE001 - returned to _commit, which fails the futures
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if not isinstance(e, sqlite3.Error):
                return e
            error = self.store._rescue(ops, e)
            self.store._error = self.store._error or error
            return error


class RunStore:
    def __init__(self, path: Path, *, busy_timeout: float = 5.0, exclusive: bool = False,
                 partitions: bool = True):
        """Open (and create) the store. ``exclusive``: hold the run directory's lock, so two
        runs never write to one store at once. ``partitions``: take in the stores Ray workers
        left beside it (false for a worker's own partition)."""
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._lock_fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if exclusive:
                self._take_lock()
            self.db = self._connect()
            self.db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except sqlite3.Error as e:
            self._release_lock()
            raise StoreError(f"{self.path}: cannot open the run store: "
                             f"{explain_sqlite(self.path, e, busy_timeout=busy_timeout)}") from None
        except OSError as e:
            self._release_lock()
            raise StoreError(f"{self.path}: cannot open the run store: {e.strerror or e}") from None
        self._writer: _Writer | None = None
        self._last: concurrent.futures.Future[None] | None = None
        self._error: StoreError | None = None  # the first write that could not be committed
        self._rescued = 0
        self.replayed = 0  # answers loaded from rescue files (this store's and partitions')
        # only the run that owns the directory loads saved answers; readers (plan) do not write
        try:
            if exclusive:
                self._replay_rescues()
            self.absorbed = (0 if not partitions else self.absorb_partitions() if exclusive
                             else self._absorb_if_idle())
        except StoreError:
            self.db.close()
            self._release_lock()
            raise

    # -- connection and schema
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _migrate(self) -> None:
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)"
        )
        done = {r[0] for r in self.db.execute("SELECT name FROM migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            self.db.execute("BEGIN IMMEDIATE")
            for stmt in filter(str.strip, sql.split(";")):
                self.db.execute(stmt)
            self.db.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))
            self.db.execute("COMMIT")

    def _take_lock(self) -> None:
        import fcntl

        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise TextbookGenError(
                f"{self.path.parent}: another textbook-gen run (pid {holder}) is writing to this"
                " run directory; wait for it to end, or give this run another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def job_identity(self) -> str:
        """How job ids and seeds are formed in this store (``expand.IDENTITIES``): "names64"
        (slugs, 63-bit seeds), "names" (slugs, 32-bit seeds) or "positions" (legacy)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'job_identity'").fetchone()
        return str(row[0]) if row else "names64"

    # -- writes: queued to the writer thread; each returns a future resolved once durable
    def _enqueue(self, name: str, args: tuple[Any, ...]) -> concurrent.futures.Future[None]:
        return self._enqueue_all([(name, args)])

    def _enqueue_all(self, ops: list[Op]) -> concurrent.futures.Future[None]:
        """Queue operations that commit together; the future resolves once they are durable."""
        if self._writer is None:
            self._writer = _Writer(self)
            self._writer.start()
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._last = fut
        if self._writer.dead is not None:
            fut.set_exception(self._writer.dead)
            return fut
        self._writer.q.put((ops, fut))
        if self._writer.dead is not None:  # it died as this was queued
            _fail(fut, self._writer.dead)
        return fut

    def commit(self) -> None:
        """Wait until every write so far is durable; raise ``StoreError`` if one could not be."""
        if self._last is not None:
            self._last.exception()  # groups commit in order: the last one done means all are
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        try:
            self.commit()
        finally:
            if self._writer is not None:
                self._writer.q.put(None)
                self._writer.join()
                self._writer = None
            self.db.close()
            self._release_lock()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(StoreError):  # the first error is the one to show
            self.close()

    # -- rescue: writes that could not be committed are kept beside the store
    def _rescue(self, ops: list[Op], cause: sqlite3.Error) -> StoreError:
        """Called by the writer thread with a group it could not commit."""
        why = explain_sqlite(self.path, cause, busy_timeout=self.busy_timeout)
        answers = sum(1 for name, _ in ops if name == "response")
        rescue = self.path.with_name(f"{self.path.name}.rescue-{os.getpid()}.jsonl")
        try:
            with open(rescue, "a", encoding="utf-8") as f:
                for name, args in ops:
                    f.write(json.dumps([name, list(args)], ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            lost = (f"; {answers} paid answer(s) could not be saved anywhere"
                    f" ({e.strerror or e}) and will be requested again") if answers else ""
            return StoreError(why + lost)
        self._rescued += answers
        kept = (f"; {self._rescued} paid answer(s) were saved to {rescue.name} and are loaded"
                " by the next run") if self._rescued else ""
        return StoreError(f"{why}{kept}. Then run the same command again.")

    def _unstorable(self, ops: list[Op], cause: Exception) -> StoreError:
        """Called by the writer thread with a job's writes that hold a value SQLite cannot
        store (an integer past 64 bits): neither the store nor a rescue file can keep them
        (a replay would fail the same way), so the run stops and names them."""
        what = next((f"the answer to request {args[0][:12]}" for name, args in ops
                     if name == "response"), None) or next(
            (f"the {name} write" for name, _ in ops if name != "request"), "a write")
        return StoreError(
            f"{self.path}: cannot store {what}: {cause} ({type(cause).__name__}): a value in"
            " it (such as a usage count the provider reported) is out of SQLite's range. It is"
            " not kept, and the run stops; a rerun requests it again")

    def _replay_rescues(self) -> int:
        """Load the rescue files an earlier run left beside this store into it."""
        return sum(self._replay(r) for r in self._rescues_of(self.path))

    @staticmethod
    def _rescues_of(store: Path) -> list[Path]:
        return sorted(store.parent.glob(f"{store.name}.rescue-*.jsonl"))

    def _replay(self, rescue: Path) -> int:
        """Commit the writes of one rescue file (this store's, or a Ray worker partition's)
        into this store in one transaction, then remove the file. Returns the answers."""
        ops: list[Op] = []
        with open(rescue, encoding="utf-8") as f:
            for line in f:
                try:
                    name, args = json.loads(line)
                except ValueError:
                    continue  # a line cut short by the crash that left this file
                if name in WRITES:
                    ops.append((name, as_written_now(name, tuple(args))))
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for name, args in ops:
                self.db.execute(WRITES[name], args)
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise StoreError(f"{rescue}: cannot load saved answers into the store: "
                             f"{explain_sqlite(self.path, e, busy_timeout=self.busy_timeout)}"
                             ) from None
        rescue.unlink()
        answers = sum(1 for name, _ in ops if name == "response")
        self.replayed += answers
        return answers

    def checkpoint(self) -> None:
        """Every committed write into the database file itself (the WAL emptied), so that a
        reader opening it immutable (a Ray worker, maybe on another node) sees all of it."""
        self.commit()
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot checkpoint the run store: "
                             f"{explain_sqlite(self.path, e, busy_timeout=self.busy_timeout)}"
                             ) from None

    # -- partitions: the stores Ray workers wrote (textbook_gen/distributed_run.py)
    def partitions(self) -> list[Path]:
        """The partitions beside this store, and those of which only a rescue file is left
        (its worker's writes that could not be committed)."""
        found = {p.name for p in self.path.parent.glob(PARTITION_GLOB)}
        found |= {r.name.split(".rescue-")[0]
                  for r in self.path.parent.glob(PARTITION_GLOB + ".rescue-*.jsonl")}
        return [self.path.parent / name for name in sorted(found)]

    def _absorb_if_idle(self) -> int:
        """A reader takes in partitions only while no run owns the directory (a killed Ray
        run's workers wrote them): then every command sees one run."""
        if not self.partitions():
            return 0
        self._take_lock_quietly()
        if self._lock_fd is None:
            return 0  # a run is live: it takes them in itself
        try:
            return self.absorb_partitions()
        finally:
            self._release_lock()

    def _take_lock_quietly(self) -> None:
        try:
            self._take_lock()
        except TextbookGenError:
            self._lock_fd = None

    def absorb_partitions(self) -> int:
        """Take the answers of every partition no worker holds into this store and remove
        it; then the writes its worker could not commit (its rescue files, newer than what
        it committed). Idempotent: a crash between the steps takes nothing in twice. An ok
        answer is never replaced by a failure. Returns the answers taken in (those of
        rescue files are counted in ``replayed``)."""
        import fcntl

        taken = 0
        for part in self.partitions():
            lock = part.with_name(part.name + ".lock")
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live worker's
                if part.exists():
                    taken += self._absorb(part)
                for extra in ("", "-wal", "-shm", "-journal"):
                    part.with_name(part.name + extra).unlink(missing_ok=True)
                # after the partition is gone, so that a crash here never takes its older
                # writes in over these: the file names the partition until it is replayed
                for rescue in self._rescues_of(part):
                    self._replay(rescue)
                lock.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return taken

    def _absorb(self, part: Path) -> int:
        cols = ", ".join(c for c in _ALL_RESPONSE_COLUMNS)
        try:
            self.db.execute("ATTACH DATABASE ? AS part", (str(part),))
            # a partition an older release's worker left has fewer columns: theirs as meant
            has = {r[1] for r in self.db.execute("PRAGMA part.table_info(responses)")}
            source = ", ".join(c if c in has else _COLUMN_DEFAULTS[c]
                               for c in _ALL_RESPONSE_COLUMNS)
            try:
                self.db.execute("BEGIN IMMEDIATE")
                n = self.db.execute("SELECT COUNT(*) FROM part.responses WHERE status = 'ok'"
                                    ).fetchone()[0]
                self.db.execute("INSERT OR IGNORE INTO requests SELECT key, body, created_at"
                                " FROM part.requests")
                self.db.execute(
                    f"INSERT INTO responses ({cols}) SELECT {source} FROM part.responses WHERE"
                    f" true ON CONFLICT(key) DO UPDATE SET "
                    + ", ".join(f"{c}=excluded.{c}" for c in _ALL_RESPONSE_COLUMNS if c != "key")
                    + " WHERE responses.status != 'ok'")
                self.db.execute("INSERT OR REPLACE INTO jobs SELECT job_id, request_key,"
                                " updated_at FROM part.jobs")
                self.db.execute("COMMIT")
            finally:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                self.db.execute("DETACH DATABASE part")
        except sqlite3.Error as e:
            raise StoreError(f"{part}: cannot take this Ray worker's answers into the run store:"
                             f" {explain_sqlite(self.path, e, busy_timeout=self.busy_timeout)}."
                             " Nothing is lost: the file stays until this succeeds") from None
        return int(n)

    # -- requests and responses
    def put_request(self, req: Request) -> concurrent.futures.Future[None]:
        return self._enqueue_all([_request_op(req, time.time())])

    def get_request(self, key: str) -> Request | None:
        row = self.db.execute("SELECT body FROM requests WHERE key = ?", (key,)).fetchone()
        return Request.from_canonical(json.loads(row[0])) if row else None

    def put_response(
        self, req: Request, resp: Response, *, cost_usd: float | None, attempts: int,
        batch_id: str | None = None, job_id: str | None = None,
    ) -> concurrent.futures.Future[None]:
        """Store an answer (and link ``job_id`` to it): one future for all of it.
        ``cost_usd``: what the request cost (None: unknown, the model has no price)."""
        now = time.time()
        ops: list[Op] = [
            _request_op(req, now),
            ("response", (req.key, resp.text, resp.finish_reason, resp.input_tokens,
                          resp.output_tokens, cost_usd or 0.0, req.provider, resp.model,
                          resp.response_id, resp.latency_s, attempts, batch_id, now,
                          int(cost_usd is not None))),
        ]
        if job_id is not None:
            ops.append(("link", (job_id, req.key, now)))
        return self._enqueue_all(ops)

    def put_failure(self, req: Request, *, kind: str, error: str, attempts: int,
                    job_id: str | None = None, cost_usd: float | None = 0.0,
                    usage: tuple[int, int] = (0, 0)) -> concurrent.futures.Future[None]:
        """Record that a request ended without a usable answer, with what the provider
        billed for it (``cost_usd`` None: unknown); a later run tries it again."""
        now = time.time()
        ops: list[Op] = [
            _request_op(req, now),
            ("failure", (req.key, req.provider, attempts, kind, error[:2000], now, usage[0],
                         usage[1], cost_usd or 0.0, int(cost_usd is not None))),
        ]
        if job_id is not None:
            ops.append(("link", (job_id, req.key, now)))
        return self._enqueue_all(ops)

    def get_response(self, key: str) -> StoredResponse | None:
        return self.response_in(self.db, key)

    def job_key(self, job_id: str) -> str | None:
        return self.job_key_in(self.db, job_id)

    @staticmethod
    def response_in(db: sqlite3.Connection, key: str) -> StoredResponse | None:
        """The stored response to a request, read through ``db`` (this store's, or another
        connection to a store file)."""
        row = db.execute(f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE key = ?",
                         (key,)).fetchone()
        return StoredResponse(*row) if row else None

    @staticmethod
    def job_key_in(db: sqlite3.Connection, job_id: str) -> str | None:
        row = db.execute("SELECT request_key FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return str(row[0]) if row else None

    def link_job(self, job_id: str, key: str) -> concurrent.futures.Future[None]:
        return self._enqueue("link", (job_id, key, time.time()))

    def job_response(self, job_id: str) -> StoredResponse | None:
        found = self.job_answer(job_id)
        return found[0] if found else None

    def job_answer(self, job_id: str) -> tuple[StoredResponse, dict[str, Any], int] | None:
        """A job's last response, the parameters of the request as it was sent, and how many
        leading characters of the answer the template wrote (its answer start), in one query
        (records need all three)."""
        row = self.db.execute(
            f"SELECT {', '.join('r.' + c for c in StoredResponse.__dataclass_fields__)}, q.body"
            " FROM jobs j JOIN responses r ON r.key = j.request_key"
            " LEFT JOIN requests q ON q.key = j.request_key WHERE j.job_id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        body = json.loads(row[-1]) if row[-1] else {}
        messages = body.get("messages") or [{}]
        start = messages[-1].get("content") or "" if messages[-1].get("role") == "assistant" else ""
        return StoredResponse(*row[:-1]), dict(body.get("params") or {}), len(start)

    def answered_jobs(self) -> int:
        """Jobs of any spec run in this store whose last request has an answer."""
        row = self.db.execute("SELECT COUNT(*) FROM jobs j JOIN responses r ON r.key ="
                              " j.request_key WHERE r.status = 'ok'").fetchone()
        return int(row[0])

    def totals(self) -> dict[str, Any]:
        """Answers, failures, and what every request stored here was billed (failures
        included): the tokens, and the cost (None when a model without a price was billed)."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(status = 'ok'),0), COALESCE(SUM(status = 'failed'),0),"
            " COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0),"
            " COALESCE(SUM(cost_usd),0), COALESCE(MIN(cost_known),1) FROM responses"
        ).fetchone()
        return {"responses": row[0], "input_tokens": row[2], "output_tokens": row[3],
                "cost_usd": round(row[4], 6) if row[5] else None, "failed": row[1]}

    # -- runs
    def start_run(self) -> int:
        last = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0]
        run_id = int(last) + 1
        self._enqueue("run_start", (run_id, time.time()))
        return run_id

    def finish_run(self, run_id: int, status: str, *, sent: int, cached: int, failed: int,
                   cost_usd: float, only_running: bool = False) -> None:
        """Record how a run ended; ``only_running``: unless it was recorded already."""
        if only_running:
            row = self.db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is not None and row[0] != "running":
                return
        self._enqueue("run_finish", (time.time(), status, sent, cached, failed, cost_usd, run_id))
        self.commit()

    # -- batches (written before the provider is called, so a crash never submits twice)
    def add_batch(self, batch_id: str, provider: str, keys: list[str], endpoint: str) -> None:
        now = time.time()
        self._enqueue("batch_add", (batch_id, provider, json.dumps(keys), endpoint, now, now))
        self.commit()

    def update_batch(self, batch_id: str, *, status: str, remote_id: str | None = None,
                     detail: str | None = None) -> None:
        self._enqueue("batch_update", (status, remote_id, detail, time.time(), batch_id))
        self.commit()

    def batches(self, statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, provider, remote_id, status, keys, endpoint, created_at, updated_at, detail"
            " FROM batches ORDER BY created_at"
        ).fetchall()
        out = []
        for r in rows:
            if statuses and r[3] not in statuses:
                continue
            out.append({"id": r[0], "provider": r[1], "remote_id": r[2], "status": r[3],
                        "keys": json.loads(r[4]), "endpoint": r[5], "created_at": r[6],
                        "updated_at": r[7], "detail": r[8]})
        return out
