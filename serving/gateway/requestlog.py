"""The request log: one record per request, append-only SQLite that monitoring reads.

Writes go through a queue to one writer thread (batched commits), so the event loop never
waits on disk. Read it with :func:`read_requests`::

    from serving.gateway.requestlog import read_requests
    df = read_requests("data/requestlog/requests.sqlite")
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    endpoint TEXT NOT NULL,
    key_id TEXT,
    model TEXT,
    registry_version TEXT,
    status INTEGER NOT NULL,
    error_code TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_ms REAL,
    ttft_ms REAL,
    guardrails TEXT,
    prompt_embedding BLOB
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
"""


@dataclass
class RequestRecord:
    id: str
    ts: float
    endpoint: str
    key_id: str | None = None
    model: str | None = None
    registry_version: str | None = None
    status: int = 200
    error_code: str | None = None
    stream: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    guardrails: list[dict] = field(default_factory=list)
    prompt_embedding: bytes | None = None


class RequestLog:
    """Append-only writer; ``close()`` flushes what is queued."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.path) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        self._q: queue.Queue[RequestRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="requestlog", daemon=True)
        self._thread.start()

    def write(self, record: RequestRecord) -> None:
        self._q.put(record)

    def _run(self) -> None:
        db = sqlite3.connect(self.path)
        db.execute("PRAGMA synchronous=NORMAL")
        cols = [f.name for f in RequestRecord.__dataclass_fields__.values()]
        sql = f"INSERT OR IGNORE INTO requests ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        done = False
        while not done:
            batch = [self._q.get()]
            while not self._q.empty() and len(batch) < 500:
                batch.append(self._q.get_nowait())
            rows = []
            for rec in batch:
                if rec is None:
                    done = True
                    continue
                d = asdict(rec)
                d["guardrails"] = json.dumps(d["guardrails"])
                d["stream"] = int(d["stream"])
                rows.append(tuple(d[c] for c in cols))
            try:
                db.executemany(sql, rows)
                db.commit()
            except sqlite3.Error as e:  # a full disk must not take the gateway down
                log.error("request log write failed (%d records lost): %s", len(rows), e)
        db.close()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(10)


def read_requests(path: str | Path, since: float | None = None):
    """The log as a pandas DataFrame (embeddings as float32 arrays), optionally from ``since``."""
    import numpy as np
    import pandas as pd

    with sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True) as db:
        q = "SELECT * FROM requests" + (" WHERE ts >= ?" if since is not None else "") + " ORDER BY ts"
        df = pd.read_sql_query(q, db, params=(since,) if since is not None else None)
    df["prompt_embedding"] = [np.frombuffer(b, dtype=np.float32) if b is not None else None
                              for b in df["prompt_embedding"]]
    df["guardrails"] = [json.loads(g) if g else [] for g in df["guardrails"]]
    return df
