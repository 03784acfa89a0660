"""Usage per key and UTC day (requests, refused requests, prompt and completion tokens): what a key used,
whichever gateway served it.

In this process by default; in Redis (``state.redis_url``) every gateway adds to the same hash per key and
day (``<prefix>:usage:{key}:<YYYY-MM-DD>``, kept ``state.usage_days``). Recording happens after the answer,
off its path; ``GET /v1/usage`` reads it back for the calling key.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

log = logging.getLogger(__name__)

FIELDS = ("requests", "refused", "prompt_tokens", "completion_tokens")


def day_of(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def last_days(today_ts: float, days: int) -> list[str]:
    today = dt.datetime.fromtimestamp(today_ts, dt.UTC).date()
    return [(today - dt.timedelta(days=i)).isoformat() for i in range(days)]


def increments(status: int, prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, int]:
    """What one request adds: a request; tokens when it was answered (status < 400), else one refusal (a
    request refused by a limit or a rail, or failed upstream, is not charged tokens)."""
    ok = status < 400
    return {"requests": 1, "refused": int(not ok), "prompt_tokens": int(prompt_tokens or 0) if ok else 0,
            "completion_tokens": int(completion_tokens or 0) if ok else 0}


class MemoryUsage:
    shared = False

    def __init__(self, keep_days: int = 35) -> None:
        self._data: dict[tuple[str, str], dict[str, int]] = {}
        self._lock = threading.Lock()
        self.keep_days = keep_days
        self._pruned = ""  # the day old entries were last dropped

    async def record(self, key: str, ts: float, inc: dict[str, int]) -> None:
        self.add(key, ts, inc)

    def add(self, key: str, ts: float, inc: dict[str, int]) -> None:
        day = day_of(ts)
        with self._lock:
            if day > self._pruned:  # a newer day (ISO dates sort as text): forget days past keep_days
                keep = set(last_days(ts, self.keep_days))
                self._data = {k: v for k, v in self._data.items() if k[1] in keep}
                self._pruned = day
            row = self._data.setdefault((key, day), dict.fromkeys(FIELDS, 0))
            for k, v in inc.items():
                row[k] += v

    async def read(self, key: str, days: list[str]) -> dict[str, dict[str, int]]:
        with self._lock:
            return {d: dict(self._data.get((key, d), dict.fromkeys(FIELDS, 0))) for d in days}


class RedisUsage:
    shared = True

    def __init__(self, redis, prefix: str, keep_days: int = 35, paused=lambda: False) -> None:
        self._redis, self.prefix, self.keep_days = redis, prefix, keep_days
        self._paused = paused  # true right after the limiter saw Redis fail: skip instead of waiting on it

    def _key(self, key: str, day: str) -> str:
        return f"{self.prefix}:usage:{{{key}}}:{day}"

    async def record(self, key: str, ts: float, inc: dict[str, int]) -> None:
        """One round trip (a MULTI pipeline); a failure is logged, not raised: the answer is gone already."""
        from redis.exceptions import RedisError

        if self._paused():
            log.debug("usage of key %s not recorded: Redis failed a moment ago", key)
            return
        name = self._key(key, day_of(ts))
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for k, v in inc.items():
                    if v:
                        pipe.hincrby(name, k, v)
                pipe.expire(name, self.keep_days * 86400)
                await pipe.execute()
        except (RedisError, OSError) as e:
            log.warning("usage of key %s not recorded in Redis: %s", key, e)

    async def read(self, key: str, days: list[str]) -> dict[str, dict[str, int]]:
        """Raises:
            APIError: 503 when Redis does not answer."""
        from redis.exceptions import RedisError

        from serving.gateway.errors import APIError

        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for d in days:
                    pipe.hgetall(self._key(key, d))
                rows = await pipe.execute()
        except (RedisError, OSError) as e:
            raise APIError(503, "The gateway's shared state store (Redis) is unreachable; retry shortly.",
                           "server_error", "state_store_unavailable", headers={"Retry-After": "1"}) from e
        return {d: {f: int(row.get(f, 0)) for f in FIELDS} for d, row in zip(days, rows, strict=True)}


def make_usage(cfg, limiter):
    """Usage next to the limits: in Redis when the limiter is (sharing its connection), else in memory."""
    redis = getattr(limiter, "_redis", None)
    if redis is not None:
        return RedisUsage(redis, cfg.key_prefix, cfg.usage_days, paused=limiter.paused)
    return MemoryUsage(cfg.usage_days)
