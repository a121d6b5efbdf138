"""The run store: one SQLite file (WAL) per run directory holding every request and response.

The engine writes here as answers arrive and commits in groups at most ``commit_interval``
seconds apart (fsync'd: ``synchronous=FULL``), so a crash loses at most that much. A request
is known by its content hash; a stored ``ok`` response is never paid for again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textbook_gen.errors import TextbookGenError
from textbook_gen.providers.base import Request, Response

# Named, ordered migrations: never edit one that has shipped, add a new one.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_initial",
        """
        CREATE TABLE requests (
            key TEXT PRIMARY KEY,
            body TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE responses (
            key TEXT PRIMARY KEY,
            status TEXT NOT NULL,          -- ok | failed
            text TEXT,
            finish_reason TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            provider TEXT,
            model TEXT,
            response_id TEXT,
            latency_s REAL,
            attempts INTEGER NOT NULL DEFAULT 1,
            error_kind TEXT,
            error TEXT,
            batch_id TEXT,
            created_at REAL NOT NULL
        );
        CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY,
            request_key TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at REAL NOT NULL,
            finished_at REAL,
            status TEXT NOT NULL,
            sent INTEGER NOT NULL DEFAULT 0,
            cached INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0
        );
        """,
    ),
    (
        "002_batches",
        """
        CREATE TABLE batches (
            id TEXT PRIMARY KEY,           -- our id, written before the provider is called
            provider TEXT NOT NULL,
            remote_id TEXT,                -- the provider's batch id, once it exists
            status TEXT NOT NULL,          -- preparing | submitted | ended | collected | failed
            keys TEXT NOT NULL,            -- JSON list of request keys in this batch
            endpoint TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            detail TEXT
        );
        """,
    ),
]


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


_RESPONSE_COLUMNS = ", ".join(StoredResponse.__dataclass_fields__)


class RunStore:
    def __init__(self, path: Path, *, commit_interval: float = 0.05):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise TextbookGenError(f"{self.path}: cannot open the run store: {e}") from None
        self.commit_interval = commit_interval
        self._in_tx = False
        self._last_commit = time.monotonic()

    # -- schema
    def _migrate(self) -> None:
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)"
        )
        done = {r[0] for r in self.db.execute("SELECT name FROM migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            self.db.execute("BEGIN")
            for stmt in filter(str.strip, sql.split(";")):
                self.db.execute(stmt)
            self.db.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))
            self.db.execute("COMMIT")

    # -- transactions: writes join an open transaction; commit() makes them durable
    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        if not self._in_tx:
            self.db.execute("BEGIN")
            self._in_tx = True
        self.db.execute(sql, args)

    def commit(self) -> None:
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False
        self._last_commit = time.monotonic()

    def commit_due(self) -> bool:
        return self._in_tx and time.monotonic() - self._last_commit >= self.commit_interval

    def close(self) -> None:
        self.commit()
        self.db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # -- requests and responses
    def put_request(self, req: Request) -> None:
        self._write(
            "INSERT OR IGNORE INTO requests (key, body, created_at) VALUES (?, ?, ?)",
            (req.key, req.canonical_json(), time.time()),
        )

    def get_request(self, key: str) -> Request | None:
        row = self.db.execute("SELECT body FROM requests WHERE key = ?", (key,)).fetchone()
        return Request.from_canonical(json.loads(row[0])) if row else None

    def put_response(
        self, req: Request, resp: Response, *, cost_usd: float, attempts: int,
        batch_id: str | None = None,
    ) -> None:
        self.put_request(req)
        self._write(
            "INSERT OR REPLACE INTO responses (key, status, text, finish_reason, input_tokens,"
            " output_tokens, cost_usd, provider, model, response_id, latency_s, attempts,"
            " error_kind, error, batch_id, created_at)"
            " VALUES (?, 'ok', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?)",
            (req.key, resp.text, resp.finish_reason, resp.input_tokens, resp.output_tokens,
             cost_usd, req.provider, resp.model, resp.response_id, resp.latency_s, attempts,
             batch_id, time.time()),
        )

    def put_failure(self, req: Request, *, kind: str, error: str, attempts: int) -> None:
        """Record that a request ended without a usable answer; a later run tries it again."""
        self.put_request(req)
        self._write(
            "INSERT OR REPLACE INTO responses (key, status, provider, attempts, error_kind, error,"
            " created_at) VALUES (?, 'failed', ?, ?, ?, ?, ?)",
            (req.key, req.provider, attempts, kind, error[:2000], time.time()),
        )

    def get_response(self, key: str) -> StoredResponse | None:
        row = self.db.execute(
            f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE key = ?", (key,)
        ).fetchone()
        return StoredResponse(*row) if row else None

    def link_job(self, job_id: str, key: str) -> None:
        self._write(
            "INSERT INTO jobs (job_id, request_key, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(job_id) DO UPDATE SET request_key = excluded.request_key,"
            " updated_at = excluded.updated_at",
            (job_id, key, time.time()),
        )

    def job_response(self, job_id: str) -> StoredResponse | None:
        row = self.db.execute(
            f"SELECT {', '.join('r.' + c for c in StoredResponse.__dataclass_fields__)}"
            " FROM jobs j JOIN responses r ON r.key = j.request_key WHERE j.job_id = ?",
            (job_id,),
        ).fetchone()
        return StoredResponse(*row) if row else None

    def failures(self) -> Iterator[tuple[str, str, str]]:
        """(job_id, error_kind, error) for every job whose last request failed."""
        yield from self.db.execute(
            "SELECT j.job_id, r.error_kind, r.error FROM jobs j JOIN responses r"
            " ON r.key = j.request_key WHERE r.status = 'failed' ORDER BY j.job_id"
        )

    def totals(self) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0),"
            " COALESCE(SUM(cost_usd),0) FROM responses WHERE status = 'ok'"
        ).fetchone()
        failed = self.db.execute("SELECT COUNT(*) FROM responses WHERE status='failed'").fetchone()
        return {"responses": row[0], "input_tokens": row[1], "output_tokens": row[2],
                "cost_usd": round(row[3], 6), "failed": failed[0]}

    # -- runs
    def start_run(self) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (started_at, status) VALUES (?, 'running')", (time.time(),)
        )
        return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, status: str, *, sent: int, cached: int, failed: int,
                   cost_usd: float) -> None:
        self.commit()
        self.db.execute(
            "UPDATE runs SET finished_at=?, status=?, sent=?, cached=?, failed=?, cost_usd=?"
            " WHERE id=?", (time.time(), status, sent, cached, failed, cost_usd, run_id),
        )

    # -- batches (written before the provider is called, so a crash never submits twice)
    def add_batch(self, batch_id: str, provider: str, keys: list[str], endpoint: str) -> None:
        now = time.time()
        self._write(
            "INSERT INTO batches (id, provider, status, keys, endpoint, created_at, updated_at)"
            " VALUES (?, ?, 'preparing', ?, ?, ?, ?)",
            (batch_id, provider, json.dumps(keys), endpoint, now, now),
        )
        self.commit()

    def update_batch(self, batch_id: str, *, status: str, remote_id: str | None = None,
                     detail: str | None = None) -> None:
        self._write(
            "UPDATE batches SET status=?, remote_id=COALESCE(?, remote_id),"
            " detail=COALESCE(?, detail), updated_at=? WHERE id=?",
            (status, remote_id, detail, time.time(), batch_id),
        )
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
