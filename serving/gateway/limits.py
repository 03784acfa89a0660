"""Per-key request and token rate limits over a sliding minute, and per-key concurrency slots.

Two stores with one behaviour: :class:`RateLimiter` keeps the counters in this process (one gateway, the
default); :class:`RedisLimiter` keeps them in Redis (``state.redis_url``), so several gateways share one
key's limits. Every Redis step is one Lua script, atomic on the server, timed by the server's clock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque

from serving.gateway.errors import APIError

log = logging.getLogger(__name__)

WINDOW_S = 60.0


def _too_big(tokens: int, tpm: int) -> APIError:
    return APIError(429, f"This request needs {tokens} tokens, more than the key's limit of {tpm} tokens per "
                    "minute; lower max_tokens or the prompt.", "rate_limit_error", "tokens_per_request_exceeded")


def _limited(message: str, wait: float) -> APIError:
    seconds = max(1, math.ceil(wait))
    return APIError(429, f"{message}; retry in {seconds} s.", "rate_limit_error",
                    "rate_limit_exceeded", headers={"Retry-After": str(seconds)})


def _busy(n: int, cap: int) -> APIError:
    return APIError(429, f"This key already has {n} requests in flight (the limit is {cap}); wait for one to "
                    "finish.", "rate_limit_error", "concurrency_limit_exceeded", headers={"Retry-After": "1"})


class RateLimiter:
    """Admits a request when the key's last-minute requests and tokens stay within its limits (in memory).

    The methods are coroutines so that the routes use this store and :class:`RedisLimiter` alike; here
    none of them waits. ``now`` (seconds) is for tests; the default is the monotonic clock.
    """

    shared = False

    def __init__(self) -> None:
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()

    async def admit(self, key_id: str, tokens: int, rpm: int, tpm: int, now: float | None = None) -> None:
        """Record the request, or raise 429 with Retry-After.

        Raises:
            APIError: 429 (requests or tokens per minute exceeded).
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._window(key_id, now)
            if tokens > tpm:
                q.append((now, 0))  # counting its tokens cost work: the rejection counts as a request
                raise _too_big(tokens, tpm)
            if len(q) >= rpm:
                raise _limited(f"Rate limit of {rpm} requests per minute reached", q[len(q) - rpm][0] + WINDOW_S - now)
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
                raise _limited(f"Rate limit of {tpm} tokens per minute reached", wait)
            q.append((now, tokens))

    async def check_rate(self, key_id: str, rpm: int, now: float | None = None) -> None:
        """Refuse a key whose last minute already holds ``rpm`` requests, before its body is even read (a
        client that repeats expensive requests is stopped at the cost of a header lookup). Records nothing.

        Raises:
            APIError: 429 with Retry-After.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._window(key_id, now)
            if len(q) >= rpm:
                raise _limited(f"Rate limit of {rpm} requests per minute reached", q[len(q) - rpm][0] + WINDOW_S - now)

    async def count_refused(self, key_id: str, now: float | None = None) -> None:
        """A request refused after it cost work (e.g. tokenizing a prompt too long for the model) counts as one
        request of the key's per-minute budget, with no tokens."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._window(key_id, now).append((now, 0))

    async def enter(self, key_id: str, tokens: int, rpm: int, tpm: int, cap: int, now: float | None = None) -> str:
        """A concurrency slot and the rate/token admission in one step (a request refused for the slot uses up
        none of the key's rate budget; one refused by the rate holds no slot).

        Returns:
            The slot's id (give it back with :meth:`release`).
        Raises:
            APIError: 429 (in flight, requests or tokens per minute).
        """
        slot = await self.acquire(key_id, cap)
        try:
            await self.admit(key_id, tokens, rpm, tpm, now)
        except APIError:
            await self.release(key_id, slot)
            raise
        return slot

    async def acquire(self, key_id: str, cap: int) -> str:
        """Take one of the key's ``cap`` concurrency slots; give it back with :meth:`release`.

        Returns:
            The slot's id.
        Raises:
            APIError: 429 when ``cap`` requests of this key are already in flight.
        """
        with self._lock:
            n = self._inflight.get(key_id, 0)
            if n >= cap:
                raise _busy(n, cap)
            self._inflight[key_id] = n + 1
        return uuid.uuid4().hex

    async def release(self, key_id: str, slot: str) -> None:
        with self._lock:
            n = self._inflight.get(key_id, 0) - 1
            if n > 0:
                self._inflight[key_id] = n
            else:
                self._inflight.pop(key_id, None)

    async def in_flight(self, key_id: str) -> int:
        return self._inflight.get(key_id, 0)

    async def close(self) -> None:
        pass

    def _window(self, key_id: str, now: float) -> deque[tuple[float, int]]:
        q = self._events.setdefault(key_id, deque())
        while q and q[0][0] <= now - WINDOW_S:
            q.popleft()
        return q


# ------------------------------------------------------------------------------------------- Redis
# Events of a key: a sorted set, score = time, member = "<id>:<tokens>". The clock is the server's (TIME),
# so gateways whose clocks differ still share one window; ARGV[1] replaces it for the rate window in tests.
_NOW = """
local t = redis.call('TIME')
local clock = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now = tonumber(ARGV[1]) or clock
"""

# rate(key, now, window, tokens, rpm, tpm, id, mode) -> {code, wait}: 0 admitted (or checked), 1 larger than
# tpm, 2 requests per minute, 3 tokens per minute; mode admit | check (records nothing) | refused (records one).
_RATE_FN = """
local function n_of(member) return tonumber(string.match(member, ':(%d+)$')) end
local function rate(key, now, window, tokens, rpm, tpm, id, mode)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local function record(n)
    redis.call('ZADD', key, now, id .. ':' .. n)
    redis.call('PEXPIRE', key, math.ceil(window * 1000) + 1000)
  end
  if mode == 'refused' then record(0) return {0, '0'} end
  local count = redis.call('ZCARD', key)
  if mode ~= 'check' and tokens > tpm then record(0) return {1, '0'} end
  if count >= rpm then
    local e = redis.call('ZRANGE', key, count - rpm, count - rpm, 'WITHSCORES')
    return {2, tostring(tonumber(e[2]) + window - now)}
  end
  if mode == 'check' then return {0, '0'} end
  local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local used = 0
  for i = 1, #all, 2 do used = used + n_of(all[i]) end
  if used + tokens > tpm then
    local need, wait = used + tokens - tpm, window
    for i = 1, #all, 2 do
      need = need - n_of(all[i])
      if need <= 0 then wait = tonumber(all[i + 1]) + window - now break end
    end
    record(0)
    return {3, tostring(wait)}
  end
  record(tokens)
  return {0, '0'}
end
"""

_RATE = _NOW + _RATE_FN + """
return rate(KEYS[1], now, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6],
            ARGV[7])
"""

# Concurrency slots of a key: a sorted set, member = slot id, score = when its lease ends (a gateway that dies
# holding slots gives them back when the lease runs out). Leases run on the server's clock, never a test's.
_SLOT_FN = """
local function in_use(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', clock)
  return redis.call('ZCARD', key)
end
local function hold(key, lease, id)
  redis.call('ZADD', key, clock + lease, id)
  redis.call('PEXPIRE', key, math.ceil(lease * 1000) + 1000)
end
"""

_ACQUIRE = _NOW + _SLOT_FN + """
local n = in_use(KEYS[1])
if n >= tonumber(ARGV[3]) then return n end
hold(KEYS[1], tonumber(ARGV[2]), ARGV[4])
return -1
"""

# A slot (KEYS[1]) and the admission (KEYS[2]) in one round trip: 4 = no free slot (wait = slots in use).
_ENTER = _NOW + _RATE_FN + _SLOT_FN + """
local n = in_use(KEYS[1])
if n >= tonumber(ARGV[9]) then return {4, tostring(n)} end
local r = rate(KEYS[2], now, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6],
               'admit')
if r[1] ~= 0 then return r end
hold(KEYS[1], tonumber(ARGV[8]), ARGV[10])
return {0, '0'}
"""

_IN_FLIGHT = _NOW + _SLOT_FN + """
return in_use(KEYS[1])
"""


class StateUnavailable(Exception):
    """Redis did not answer (refused, timed out, or an error reply)."""


class StatePaused(StateUnavailable):
    """Redis was not asked: it failed a moment ago (on_error: open)."""


class RedisLimiter:
    """The same limits as :class:`RateLimiter`, shared by every gateway that uses the same Redis.

    When Redis fails, ``on_error`` decides: ``open`` serves on this gateway's own in-memory limits (a
    warning is logged, Redis is tried again after ``retry_s``), ``closed`` answers 503 with Retry-After.
    """

    shared = True

    def __init__(self, url: str, prefix: str = "llmops", on_error: str = "open", timeout_s: float = 0.25,
                 slot_lease_s: float = 900.0, retry_s: float = 5.0, on_failure=None) -> None:
        import redis.asyncio as aioredis

        self.url, self.prefix, self.on_error = url, prefix, on_error
        self.slot_lease_s, self.retry_s = slot_lease_s, retry_s
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                              decode_responses=True)
        self._rate = self._redis.register_script(_RATE)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._enter = self._redis.register_script(_ENTER)
        self._count = self._redis.register_script(_IN_FLIGHT)
        self._local = RateLimiter()  # the fallback of on_error: open
        self._down_until = 0.0
        # slots to remove from Redis once it answers: releases that failed, and slots of enters whose answer was
        # lost (the script may have run); without this they would be held until their lease ends
        self._orphans: dict[tuple[str, str], None] = {}
        self._flushing, self._last_flush = False, 0.0
        self._on_failure = on_failure  # called once per failure (a metric counter)

    # ------------------------------------------------------------------- the limiter interface
    async def admit(self, key_id: str, tokens: int, rpm: int, tpm: int, now: float | None = None) -> None:
        await self._rate_step(key_id, tokens, rpm, tpm, "admit", now)

    async def check_rate(self, key_id: str, rpm: int, now: float | None = None) -> None:
        await self._rate_step(key_id, 0, rpm, 0, "check", now)

    async def count_refused(self, key_id: str, now: float | None = None) -> None:
        try:
            await self._rate_step(key_id, 0, 0, 0, "refused", now)
        except APIError:
            pass  # bookkeeping of a request refused anyway: its own answer (a 400) stands, not a 503

    async def enter(self, key_id: str, tokens: int, rpm: int, tpm: int, cap: int, now: float | None = None) -> str:
        slot = uuid.uuid4().hex
        args = ["" if now is None else repr(now), WINDOW_S, tokens, rpm, tpm, uuid.uuid4().hex, "admit",
                self.slot_lease_s, cap, slot]
        try:
            code, wait = await self._call(self._enter, [self._key("slots", key_id), self._key("rate", key_id)], args)
        except StateUnavailable as e:
            if not isinstance(e, StatePaused):
                self._orphan(key_id, slot)  # asked, no answer: the script may have run
            return "local:" + await self._local.enter(key_id, tokens, rpm, tpm, cap)
        except APIError:
            self._orphan(key_id, slot)
            raise
        if int(code) == 4:
            raise _busy(int(wait), cap)
        self._raise_for(int(code), float(wait), tokens, rpm, tpm)
        return slot

    async def acquire(self, key_id: str, cap: int) -> str:
        slot = uuid.uuid4().hex
        try:
            n = await self._call(self._acquire, [self._key("slots", key_id)], ["", self.slot_lease_s, cap, slot])
        except StateUnavailable as e:
            if not isinstance(e, StatePaused):
                self._orphan(key_id, slot)
            return "local:" + await self._local.acquire(key_id, cap)
        except APIError:
            self._orphan(key_id, slot)
            raise
        if n >= 0:
            raise _busy(n, cap)
        return slot

    async def release(self, key_id: str, slot: str) -> None:
        if slot.startswith("local:"):
            await self._local.release(key_id, slot)
        else:
            self._orphan(key_id, slot)
        if self._orphans:
            await self._flush_orphans()

    def _orphan(self, key_id: str, slot: str) -> None:
        if len(self._orphans) < 10_000:  # past that, leases free them
            self._orphans[(key_id, slot)] = None

    async def _flush_orphans(self) -> None:
        """Remove the slots waiting for removal (up to 500 per round trip). One flush at a time; in the pause
        after a failure at most one attempt a second (a release should not wait for the lease, nor hammer a
        dead server). What fails stays for the next attempt."""
        from redis.exceptions import RedisError

        now = time.monotonic()
        if self._flushing or (self.paused() and now - self._last_flush < 1.0):
            return
        self._flushing, self._last_flush = True, now
        try:
            while self._orphans:
                batch = list(self._orphans)[:500]
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key_id, slot in batch:
                        pipe.zrem(self._key("slots", key_id), slot)
                    await pipe.execute()
                for item in batch:
                    self._orphans.pop(item, None)
        except (RedisError, OSError) as e:
            if self._on_failure is not None:
                self._on_failure()
            log.debug("slot release failed, kept for the next attempt: %s", e)
        finally:
            self._flushing = False

    async def in_flight(self, key_id: str) -> int:
        """Slots of the key held in Redis (every gateway) plus those this gateway holds locally."""
        try:
            shared = await self._call(self._count, [self._key("slots", key_id)], [""])
        except StateUnavailable:
            shared = 0
        return int(shared) + await self._local.in_flight(key_id)

    def paused(self) -> bool:
        """True in the pause after a failure (on_error: open), when calls skip Redis."""
        return self.on_error == "open" and time.monotonic() < self._down_until

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:  # noqa: BLE001 - any failure means not reachable
            return False

    async def close(self) -> None:
        await self._redis.aclose()

    # ---------------------------------------------------------------------------- internals
    def _key(self, kind: str, key_id: str) -> str:
        # the hash tag keeps a key's sets on one Redis Cluster slot
        return f"{self.prefix}:{kind}:{{{key_id}}}"

    async def _rate_step(self, key_id: str, tokens: int, rpm: int, tpm: int, mode: str,
                         now: float | None) -> None:
        args = ["" if now is None else repr(now), WINDOW_S, tokens, rpm, tpm, uuid.uuid4().hex, mode]
        try:
            code, wait = await self._call(self._rate, [self._key("rate", key_id)], args)
        except StateUnavailable:
            local = {"admit": lambda: self._local.admit(key_id, tokens, rpm, tpm),
                     "check": lambda: self._local.check_rate(key_id, rpm),
                     "refused": lambda: self._local.count_refused(key_id)}[mode]
            await local()
            return
        self._raise_for(int(code), float(wait), tokens, rpm, tpm)

    @staticmethod
    def _raise_for(code: int, wait: float, tokens: int, rpm: int, tpm: int) -> None:
        if code == 1:
            raise _too_big(tokens, tpm)
        if code == 2:
            raise _limited(f"Rate limit of {rpm} requests per minute reached", wait)
        if code == 3:
            raise _limited(f"Rate limit of {tpm} tokens per minute reached", wait)

    async def _call(self, fn, *args):
        """One Redis step. Failure: StateUnavailable (on_error: open) or a 503 APIError (closed)."""
        from redis.exceptions import RedisError

        if self.paused():
            raise StatePaused  # Redis failed a moment ago: do not make every request wait for it
        try:
            if isinstance(args[0], list):  # a script: keys, args
                return await fn(keys=args[0], args=args[1])
            return await fn(*args)
        except (RedisError, OSError) as e:
            if self._on_failure is not None:
                self._on_failure()
            if self.on_error == "closed":
                log.error("Redis at %s failed (%s: %s); refusing requests (state.on_error: closed)",
                          _safe(self.url), type(e).__name__, e)
                raise APIError(503, "The gateway's shared state store (Redis) is unreachable; retry shortly.",
                               "server_error", "state_store_unavailable", headers={"Retry-After": "1"}) from e
            if time.monotonic() >= self._down_until:
                log.warning("Redis at %s failed (%s: %s); limits are this gateway's own for the next %.0f s "
                            "(state.on_error: open)", _safe(self.url), type(e).__name__, e, self.retry_s)
            self._down_until = time.monotonic() + self.retry_s
            raise StateUnavailable from e


def _safe(url: str) -> str:
    """The URL without its password (in the user part, up to the last '@', or as ``?password=``), for logs."""
    import re

    url = re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)
    return re.sub(r"^([A-Za-z][\w+.-]*://[^:/@]*:).*@", r"\1***@", url)


def make_limiter(cfg, on_failure=None):
    """The limiter ``state`` config asks for: Redis when a URL is set (in the config or its env var)."""
    import os

    url = os.environ.get(cfg.redis_url_env) if cfg.redis_url_env else None
    url = url or cfg.redis_url
    if not url:
        return RateLimiter()
    return RedisLimiter(url, cfg.key_prefix, cfg.on_error, cfg.timeout_s, cfg.slot_lease_s, cfg.retry_s,
                        on_failure=on_failure)
