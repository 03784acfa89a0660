"""Per-key request and token rate limits over a sliding minute (in memory; Redis when shared)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from serving.gateway.errors import APIError

WINDOW_S = 60.0


class RateLimiter:
    """Admits a request when the key's last-minute requests and tokens stay within its limits."""

    def __init__(self) -> None:
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, key_id: str, tokens: int, rpm: int, tpm: int, now: float | None = None) -> None:
        """Record the request, or raise 429 with Retry-After.

        Raises:
            APIError: 429 (requests or tokens per minute exceeded).
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._events.setdefault(key_id, deque())
            while q and q[0][0] <= now - WINDOW_S:
                q.popleft()
            if tokens > tpm:
                q.append((now, 0))  # counting its tokens cost work: the rejection counts as a request
                raise APIError(429, f"This request needs {tokens} tokens, more than the key's limit of "
                               f"{tpm} tokens per minute; lower max_tokens or the prompt.",
                               "rate_limit_error", "tokens_per_request_exceeded")
            if len(q) >= rpm:
                wait = q[len(q) - rpm][0] + WINDOW_S - now
                raise self._limited(f"Rate limit of {rpm} requests per minute reached", wait)
            used = sum(n for _, n in q)
            if used + tokens > tpm:
                # free enough tokens: the oldest events expire first
                need, wait = used + tokens - tpm, WINDOW_S
                for ts, n in q:
                    need -= n
                    if need <= 0:
                        wait = ts + WINDOW_S - now
                        break
                q.append((now, 0))
                raise self._limited(f"Rate limit of {tpm} tokens per minute reached", wait)
            q.append((now, tokens))

    def check_rate(self, key_id: str, rpm: int, now: float | None = None) -> None:
        """Refuse a key whose last minute already holds ``rpm`` requests, before its body is even read (a
        client that repeats expensive requests is stopped at the cost of a header lookup). Records nothing.

        Raises:
            APIError: 429 with Retry-After.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._events.get(key_id)
            if not q:
                return
            while q and q[0][0] <= now - WINDOW_S:
                q.popleft()
            if len(q) >= rpm:
                wait = q[len(q) - rpm][0] + WINDOW_S - now
                raise self._limited(f"Rate limit of {rpm} requests per minute reached", wait)

    def count_refused(self, key_id: str, now: float | None = None) -> None:
        """A request refused after it cost work (e.g. tokenizing a prompt too long for the model) counts as one
        request of the key's per-minute budget, with no tokens."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._events.setdefault(key_id, deque()).append((now, 0))

    def acquire(self, key_id: str, cap: int) -> None:
        """Count one more request in flight for the key (release it with :meth:`release`).

        Raises:
            APIError: 429 when ``cap`` requests of this key are already in flight.
        """
        with self._lock:
            n = self._inflight.get(key_id, 0)
            if n >= cap:
                raise APIError(429, f"This key already has {n} requests in flight (the limit is {cap}); wait for "
                               "one to finish.", "rate_limit_error", "concurrency_limit_exceeded",
                               headers={"Retry-After": "1"})
            self._inflight[key_id] = n + 1

    def release(self, key_id: str) -> None:
        with self._lock:
            n = self._inflight.get(key_id, 0) - 1
            if n > 0:
                self._inflight[key_id] = n
            else:
                self._inflight.pop(key_id, None)

    def in_flight(self, key_id: str) -> int:
        return self._inflight.get(key_id, 0)

    @staticmethod
    def _limited(message: str, wait: float) -> APIError:
        seconds = max(1, math.ceil(wait))
        return APIError(429, f"{message}; retry in {seconds} s.", "rate_limit_error",
                        "rate_limit_exceeded", headers={"Retry-After": str(seconds)})
