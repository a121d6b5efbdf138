"""The run store's schema: named migrations, and every write it makes as named SQL.

Kept apart from ``store.py`` (which runs them) so the schema reads in one place.
"""

from __future__ import annotations

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
    (
        # Job identity: stores made before job ids came from names keep their position-based
        # ids ("positions"), so reopening one re-sends nothing; new stores use "names".
        "003_meta",
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta (key, value) SELECT 'job_identity',
            CASE WHEN EXISTS (SELECT 1 FROM jobs) THEN 'positions' ELSE 'names' END;
        """,
    ),
    (
        # A model with no price has an unknown cost, never $0: cost_usd then holds 0 and
        # cost_known 0. A failed request keeps what the provider billed for it.
        "004_cost_known",
        """
        ALTER TABLE responses ADD COLUMN cost_known INTEGER NOT NULL DEFAULT 1;
        """,
    ),
    (
        # 63-bit job seeds ("names64"): a store with no job yet takes them; one with jobs keeps
        # the 32-bit seeds its stored requests carry, so reopening it re-sends nothing.
        "005_wide_seeds",
        """
        UPDATE meta SET value = 'names64' WHERE key = 'job_identity' AND value = 'names'
            AND NOT EXISTS (SELECT 1 FROM jobs);
        """,
    ),
]

# Every write the store makes, by name: the rescue file holds (name, args) pairs, never SQL.
WRITES: dict[str, str] = {
    "request": "INSERT OR IGNORE INTO requests (key, body, created_at) VALUES (?, ?, ?)",
    # an answer replaces a failure of the same request, keeping what the failures were billed
    "response": (
        "INSERT INTO responses (key, status, text, finish_reason, input_tokens,"
        " output_tokens, cost_usd, provider, model, response_id, latency_s, attempts,"
        " error_kind, error, batch_id, created_at, cost_known)"
        " VALUES (?, 'ok', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?)"
        " ON CONFLICT(key) DO UPDATE SET status='ok', text=excluded.text,"
        " finish_reason=excluded.finish_reason, input_tokens=excluded.input_tokens,"
        " output_tokens=excluded.output_tokens,"
        " cost_usd=excluded.cost_usd + CASE WHEN responses.status = 'failed'"
        " THEN responses.cost_usd ELSE 0 END,"
        " cost_known=excluded.cost_known AND (responses.status != 'failed'"
        " OR responses.cost_known),"
        " provider=excluded.provider, model=excluded.model, response_id=excluded.response_id,"
        " latency_s=excluded.latency_s, attempts=excluded.attempts, error_kind=NULL,"
        " error=NULL, batch_id=excluded.batch_id, created_at=excluded.created_at"
    ),
    # a failure never replaces a stored answer; what it was billed adds to the earlier ones'
    "failure": (
        "INSERT INTO responses (key, status, provider, attempts, error_kind, error, created_at,"
        " input_tokens, output_tokens, cost_usd, cost_known)"
        " VALUES (?, 'failed', ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET"
        " attempts=excluded.attempts, error_kind=excluded.error_kind, error=excluded.error,"
        " created_at=excluded.created_at,"
        " input_tokens=responses.input_tokens + excluded.input_tokens,"
        " output_tokens=responses.output_tokens + excluded.output_tokens,"
        " cost_usd=responses.cost_usd + excluded.cost_usd,"
        " cost_known=responses.cost_known AND excluded.cost_known"
        " WHERE responses.status = 'failed'"
    ),
    "link": (
        "INSERT INTO jobs (job_id, request_key, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT(job_id) DO UPDATE SET request_key = excluded.request_key,"
        " updated_at = excluded.updated_at WHERE jobs.request_key != excluded.request_key"
    ),
    "run_start": "INSERT INTO runs (id, started_at, status) VALUES (?, ?, 'running')",
    "run_finish": (
        "UPDATE runs SET finished_at=?, status=?, sent=?, cached=?, failed=?, cost_usd=?"
        " WHERE id=?"
    ),
    "batch_add": (
        "INSERT INTO batches (id, provider, status, keys, endpoint, created_at, updated_at)"
        " VALUES (?, ?, 'preparing', ?, ?, ?, ?)"
    ),
    "batch_update": (
        "UPDATE batches SET status=?, remote_id=COALESCE(?, remote_id),"
        " detail=COALESCE(?, detail), updated_at=? WHERE id=?"
    ),
}

# Rescue files hold (name, args) of the release that wrote them. Writes that took fewer
# arguments before are completed with what those releases meant: every cost known, and a
# failure billed nothing (004_cost_known).
OLDER_ARGS: dict[str, dict[int, tuple[object, ...]]] = {
    "response": {13: (1,)},
    "failure": {6: (0, 0, 0.0, 1)},
}


def as_written_now(name: str, args: tuple[object, ...]) -> tuple[object, ...]:
    """The arguments of a write from a rescue file, as ``WRITES[name]`` takes them now."""
    return args + OLDER_ARGS.get(name, {}).get(len(args), ())

