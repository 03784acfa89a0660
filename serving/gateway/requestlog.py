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

from llmops.contracts import FEEDBACK_TABLE, NO_KEY, REQUEST_LOG_TABLE, RequestRecord, open_request_log_schema

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
        self._queued = self._done = 0  # records accepted / written or given up on (flush() waits on these)
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="requestlog", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self._thread.start()

    def write(self, record: RequestRecord) -> bool:
        """Queue a record; False (and counted in ``dropped``) when the queue is full."""
        try:
            with self._progress:
                self._q.put_nowait(record)
                self._queued += 1
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                log.warning("request log queue full: %d records dropped so far", self.dropped)
            return False

    def add_feedback(self, request_id: str, key_id: str | None, score: float,
                     comment: str | None) -> tuple[str | None, str | None] | None:
        """Store a user's feedback on one of their requests (a later one from the same key replaces it): the
        request's (model, registry version), or None when the log holds no such request of that key. Blocking
        (one short transaction): call it off the event loop."""
        db = sqlite3.connect(self.path, timeout=10)
        try:
            found = db.execute(f"SELECT model, registry_version FROM {REQUEST_LOG_TABLE} WHERE id = ? AND key_id IS ? "
                               "AND status = 200 AND (shadow IS NULL OR shadow = 0)", (request_id, key_id)).fetchone()
            if found is None:
                return None
            with db:
                db.execute(f"INSERT OR REPLACE INTO {FEEDBACK_TABLE} (request_id, ts, key_id, score, comment) "
                           "VALUES (?, ?, ?, ?, ?)", (request_id, time.time(), key_id or NO_KEY, score, comment))
            return found[0], found[1]
        finally:
            db.close()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the records queued before this call are written (records queued later are not waited for);
        False when ``timeout`` seconds passed first or the writer is not running."""
        with self._progress:
            target = self._queued
            return self._progress.wait_for(lambda: self._done >= target or not self._thread.is_alive(), timeout) \
                and self._done >= target

    def _prune(self, db: sqlite3.Connection) -> None:
        if self.retention_days is not None:
            db.execute(f"DELETE FROM {REQUEST_LOG_TABLE} WHERE ts < ?", (time.time() - self.retention_days * 86400,))
        if self.max_rows is not None:
            db.execute(f"DELETE FROM {REQUEST_LOG_TABLE} WHERE id IN (SELECT id FROM {REQUEST_LOG_TABLE} "
                       "ORDER BY ts DESC LIMIT -1 OFFSET ?)", (self.max_rows,))
        if self.retention_days is not None or self.max_rows is not None:  # feedback goes with its request
            db.execute(f"DELETE FROM {FEEDBACK_TABLE} WHERE request_id NOT IN (SELECT id FROM {REQUEST_LOG_TABLE})")
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
            with self._progress:
                self._done += len(rows)
                self._progress.notify_all()
        db.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._q.put(None)
        self._thread.join(10)
