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
import time
from pathlib import Path

from llmops.contracts import REQUEST_LOG_TABLE, RequestRecord, open_request_log_schema

log = logging.getLogger(__name__)


class RequestLog:
    """Append-only writer with a bounded queue and retention; ``close()`` flushes what is queued.

    ``retention_days`` / ``max_rows`` are applied when the log opens and then every
    ``PRUNE_EVERY`` records, so the file stays bounded without a cron job.
    """

    PRUNE_EVERY = 1000

    def __init__(self, path: str | Path, max_queue: int = 10_000, retention_days: float | None = None,
                 max_rows: int | None = None, start: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_days, self.max_rows = retention_days, max_rows
        self.dropped = 0  # records not written because the queue was full
        with sqlite3.connect(self.path) as db:
            db.execute("PRAGMA journal_mode=WAL")
            open_request_log_schema(db)
            self._prune(db)
        self._q: queue.Queue[RequestRecord | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="requestlog", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self._thread.start()

    def write(self, record: RequestRecord) -> bool:
        """Queue a record; False (and counted in ``dropped``) when the queue is full."""
        try:
            self._q.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                log.warning("request log queue full: %d records dropped so far", self.dropped)
            return False

    def _prune(self, db: sqlite3.Connection) -> None:
        if self.retention_days is not None:
            db.execute(f"DELETE FROM {REQUEST_LOG_TABLE} WHERE ts < ?", (time.time() - self.retention_days * 86400,))
        if self.max_rows is not None:
            db.execute(f"DELETE FROM {REQUEST_LOG_TABLE} WHERE id IN (SELECT id FROM {REQUEST_LOG_TABLE} "
                       "ORDER BY ts DESC LIMIT -1 OFFSET ?)", (self.max_rows,))
        db.commit()

    def _run(self) -> None:
        db = sqlite3.connect(self.path)
        db.execute("PRAGMA synchronous=NORMAL")
        cols = RequestRecord.columns()
        sql = (f"INSERT OR IGNORE INTO {REQUEST_LOG_TABLE} ({', '.join(cols)}) "
               f"VALUES ({', '.join('?' * len(cols))})")
        done, since_prune = False, 0
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
                since_prune += len(rows)
                if since_prune >= self.PRUNE_EVERY:
                    since_prune = 0
                    self._prune(db)
            except sqlite3.Error as e:  # a full disk must not take the gateway down
                log.error("request log write failed (%d records lost): %s", len(rows), e)
        db.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._q.put(None)
        self._thread.join(10)
