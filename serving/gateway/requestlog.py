"""The request log writer: one :class:`llmops.contracts.RequestRecord` per request, append-only SQLite.

Writes go through a queue to one writer thread (batched commits), so the event loop never waits
on disk. The schema and its one reader live in the core contracts, where monitoring reads it::

    from llmops.contracts import read_request_log
    df = read_request_log("data/requestlog/requests.sqlite")
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from pathlib import Path

from llmops.contracts import REQUEST_LOG_SCHEMA, REQUEST_LOG_TABLE, RequestRecord

log = logging.getLogger(__name__)


class RequestLog:
    """Append-only writer; ``close()`` flushes what is queued."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.path) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(REQUEST_LOG_SCHEMA)
        self._q: queue.Queue[RequestRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="requestlog", daemon=True)
        self._thread.start()

    def write(self, record: RequestRecord) -> None:
        self._q.put(record)

    def _run(self) -> None:
        db = sqlite3.connect(self.path)
        db.execute("PRAGMA synchronous=NORMAL")
        cols = RequestRecord.columns()
        sql = (f"INSERT OR IGNORE INTO {REQUEST_LOG_TABLE} ({', '.join(cols)}) "
               f"VALUES ({', '.join('?' * len(cols))})")
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
                rows.append(rec.row())
            try:
                db.executemany(sql, rows)
                db.commit()
            except sqlite3.Error as e:  # a full disk must not take the gateway down
                log.error("request log write failed (%d records lost): %s", len(rows), e)
        db.close()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(10)
