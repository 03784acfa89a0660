"""Per-key limits, the same tests on both stores: in memory (one gateway) and in a real Redis (several).

The Redis store runs against ``redis-server`` started on a loopback port (tests/live_servers.py); each test
uses its own key prefix. ``now`` pins the clock so the sliding minute can be tested without waiting.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from serving.config import ServingConfig, SharedStateConfig
from serving.gateway.errors import APIError
from serving.gateway.limits import RateLimiter, RedisLimiter, make_limiter


@pytest.fixture(params=["memory", "redis"])
def new_limiter(request):
    """``new_limiter()`` -> a fresh limiter of the store under test (call it inside the event loop)."""
    if request.param == "memory":
        return RateLimiter
    server = request.getfixturevalue("redis_server")
    # on_error: closed, so a Redis failure fails the test instead of falling back to local limits
    return lambda: RedisLimiter(server.url, prefix="t" + uuid.uuid4().hex[:8], on_error="closed")


def run(body):
    return asyncio.run(body())


async def _refused(coro) -> APIError:
    with pytest.raises(APIError) as e:
        await coro
    return e.value


def test_requests_and_tokens_per_minute(new_limiter):
    async def body():
        rl = new_limiter()
        for i in range(3):
            await rl.admit("k", 10, rpm=3, tpm=1000, now=100.0 + i)
        e = await _refused(rl.admit("k", 10, rpm=3, tpm=1000, now=110.0))
        assert e.status == 429 and e.headers["Retry-After"] == "50"  # the oldest expires at 160
        await rl.admit("k", 10, rpm=3, tpm=1000, now=160.5)  # the window slid
        await rl.admit("other", 10, rpm=3, tpm=1000, now=110.0)  # per key

        await rl.admit("t", 600, rpm=100, tpm=1000, now=0.0)
        await rl.admit("t", 300, rpm=100, tpm=1000, now=10.0)
        e = await _refused(rl.admit("t", 200, rpm=100, tpm=1000, now=20.0))
        assert "tokens per minute" in e.message and e.headers["Retry-After"] == "40"  # the 600 expire at 60
        await rl.admit("t", 200, rpm=100, tpm=1000, now=60.5)
        await rl.close()

    run(body)


def test_a_request_larger_than_the_limit_and_refusals_that_cost_work_count_as_requests(new_limiter):
    async def body():
        rl = new_limiter()
        e = await _refused(rl.admit("other", 5000, rpm=100, tpm=1000, now=0.0))
        assert e.code == "tokens_per_request_exceeded"
        for _ in range(2):
            e = await _refused(rl.admit("big", 5000, rpm=2, tpm=1000, now=0.0))
            assert "more than the key's limit" in e.message
        e = await _refused(rl.admit("big", 10, rpm=2, tpm=1000, now=1.0))
        assert "requests per minute" in e.message

        await rl.count_refused("c", now=0.0)
        await rl.check_rate("c", rpm=2, now=1.0)  # one request so far: a check records nothing
        await rl.check_rate("c", rpm=2, now=1.0)
        await rl.count_refused("c", now=2.0)
        e = await _refused(rl.check_rate("c", rpm=2, now=3.0))
        assert e.headers["Retry-After"] == "57"
        await rl.check_rate("c", rpm=2, now=60.5)  # the first refusal left the window
        await rl.close()

    run(body)


def test_concurrency_slots(new_limiter):
    async def body():
        rl = new_limiter()
        a = await rl.acquire("k", 2)
        await rl.acquire("k", 2)
        e = await _refused(rl.acquire("k", 2))
        assert e.status == 429 and e.code == "concurrency_limit_exceeded" and e.headers["Retry-After"] == "1"
        await rl.acquire("other", 2)  # per key
        assert await rl.in_flight("k") == 2
        await rl.release("k", a)
        b = await rl.acquire("k", 2)
        assert await rl.in_flight("k") == 2 and a != b
        await rl.close()

    run(body)


def test_enter_takes_a_slot_and_the_rate_together_or_neither(new_limiter):
    async def body():
        rl = new_limiter()
        a = await rl.enter("k", 10, rpm=2, tpm=100, cap=1, now=0.0)
        assert await rl.in_flight("k") == 1
        e = await _refused(rl.enter("k", 10, rpm=2, tpm=100, cap=1, now=1.0))
        assert e.code == "concurrency_limit_exceeded"  # and it used none of the rate budget:
        await rl.release("k", a)
        b = await rl.enter("k", 10, rpm=2, tpm=100, cap=1, now=2.0)
        await rl.release("k", b)
        e = await _refused(rl.enter("k", 10, rpm=2, tpm=100, cap=1, now=3.0))
        assert e.code == "rate_limit_exceeded" and e.headers["Retry-After"] == "57"
        assert await rl.in_flight("k") == 0  # refused by the rate: it holds no slot
        await rl.enter("t", 90, rpm=9, tpm=100, cap=5, now=0.0)
        e = await _refused(rl.enter("t", 20, rpm=9, tpm=100, cap=5, now=1.0))
        assert "tokens per minute" in e.message and await rl.in_flight("t") == 1
        await rl.close()

    run(body)


def test_limits_hold_under_concurrent_requests(new_limiter):
    """Many requests at once, from two limiter objects on the same store (two gateways on one Redis; for
    the memory store, one object, as one gateway): exactly rpm are admitted."""
    async def body():
        first = new_limiter()
        shared = isinstance(first, RedisLimiter)
        second = RedisLimiter(first.url, prefix=first.prefix, on_error="closed") if shared else first

        async def one(rl) -> bool:
            try:
                await rl.admit("k", 1, rpm=25, tpm=10_000)
                return True
            except APIError:
                return False

        results = await asyncio.gather(*(one(first if i % 2 else second) for i in range(60)))
        assert sum(results) == 25
        slots = await asyncio.gather(*(first.acquire("s", 5) for _ in range(5)))
        e = await _refused(second.acquire("s", 5))
        assert e.code == "concurrency_limit_exceeded"
        await second.release("s", slots[0])
        await second.acquire("s", 5)
        await first.close()
        if shared:
            await second.close()

    run(body)


# ------------------------------------------------------------------------------ Redis only
def test_a_dead_gateways_slots_free_themselves_after_their_lease(redis_server):
    async def body():
        rl = RedisLimiter(redis_server.url, prefix="lease" + uuid.uuid4().hex[:6], slot_lease_s=0.5, on_error="closed")
        await rl.acquire("k", 1)  # never released: its gateway died
        assert (await _refused(rl.acquire("k", 1))).code == "concurrency_limit_exceeded"
        await asyncio.sleep(0.7)
        await rl.acquire("k", 1)
        await rl.close()

    run(body)


def test_redis_keys_expire_and_carry_the_prefix(redis_server):
    prefix = "exp" + uuid.uuid4().hex[:6]

    async def body():
        rl = RedisLimiter(redis_server.url, prefix=prefix, on_error="closed")
        await rl.admit("team-a", 5, rpm=10, tpm=100)
        await rl.acquire("team-a", 3)
        await rl.close()

    run(body)
    keys = sorted(k.decode() for k in redis_server.client.keys(f"{prefix}:*"))
    assert keys == [f"{prefix}:rate:{{team-a}}", f"{prefix}:slots:{{team-a}}"]
    for key in keys:
        assert redis_server.client.pttl(key) > 0, f"{key} has no expiry: Redis would grow without bound"


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_a_redis_outage_fails_open_on_local_limits_or_closed_with_503(on_error):
    """Nothing listens on the port: 'open' serves on this gateway's own limits (still enforced), 'closed'
    refuses with 503 and Retry-After; either way the failures are counted."""
    from serving.engine import free_port

    failures = []

    async def body():
        rl = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", on_error=on_error, timeout_s=0.2,
                          on_failure=lambda: failures.append(1))
        if on_error == "closed":
            e = await _refused(rl.admit("k", 1, rpm=2, tpm=100))
            assert e.status == 503 and e.code == "state_store_unavailable" and e.headers["Retry-After"] == "1"
            assert (await _refused(rl.acquire("k", 2))).status == 503
        else:
            await rl.admit("k", 1, rpm=2, tpm=100)
            await rl.admit("k", 1, rpm=2, tpm=100)
            e = await _refused(rl.admit("k", 1, rpm=2, tpm=100))  # the local limits still hold
            assert e.status == 429
            slot = await rl.acquire("k", 1)
            assert slot.startswith("local:") and await rl.in_flight("k") == 1
            # one failure so far: after it Redis is skipped for retry_s, not waited on per call, and the slots
            # taken meanwhile never reached Redis: nothing is left to remove there
            assert len(failures) == 1 and not rl._orphans
            await rl.release("k", slot)
            assert len(failures) == 1
            assert await rl.in_flight("k") == 0
        assert not await rl.ping()
        await rl.close()

    run(body)
    assert failures, "the failure was not counted"


def test_the_config_picks_the_store_and_the_env_var_wins(monkeypatch, redis_server):
    assert isinstance(make_limiter(SharedStateConfig()), RateLimiter)
    monkeypatch.setenv("LLMOPS_REDIS_URL", redis_server.url)
    limiter = make_limiter(SharedStateConfig(redis_url="redis://elsewhere:1/0"))
    assert isinstance(limiter, RedisLimiter) and limiter.url == redis_server.url
    with pytest.raises(ValueError, match="redis_url must start with"):
        ServingConfig.model_validate({"state": {"redis_url": "http://127.0.0.1:6379"}})


def test_usage_adds_up_per_key_and_day_in_both_stores_and_expires_in_redis(redis_server):
    from serving.gateway.usage import MemoryUsage, RedisUsage, increments, last_days

    prefix = "use" + uuid.uuid4().hex[:6]
    day1, day2 = 1_800_000_000.0, 1_800_000_000.0 + 86400  # two UTC days

    async def body():
        rl = RedisLimiter(redis_server.url, prefix=prefix, on_error="closed")
        stores = [MemoryUsage(keep_days=3), RedisUsage(rl._redis, prefix, keep_days=3)]
        for store in stores:
            await store.record("k", day1, increments(200, 10, 5))
            await store.record("k", day1, increments(429, 10, None))  # refused: no tokens charged
            await store.record("k", day2, increments(200, 1, 1))
            await store.record("other", day2, increments(200, 7, 7))
        days = last_days(day2, 3)
        got = [await store.read("k", days) for store in stores]
        await rl.close()
        return days, got

    days, (memory, redis) = run(body)
    assert memory == redis
    assert memory[days[0]] == {"requests": 1, "refused": 0, "prompt_tokens": 1, "completion_tokens": 1}
    assert memory[days[1]] == {"requests": 2, "refused": 1, "prompt_tokens": 10, "completion_tokens": 5}
    assert memory[days[2]] == {"requests": 0, "refused": 0, "prompt_tokens": 0, "completion_tokens": 0}
    keys = redis_server.client.keys(f"{prefix}:usage:*")
    assert len(keys) == 3 and all(0 < redis_server.client.ttl(k) <= 3 * 86400 for k in keys)


def test_slots_are_given_back_after_a_redis_hiccup_not_held_until_their_lease(redis_server):
    """A release during the pause after a failure still reaches Redis; a slot whose enter answer was lost
    (the script ran, the reply timed out) is removed at the next release instead of being held 900 s."""
    from redis.exceptions import TimeoutError as RedisTimeout

    async def body():
        rl = RedisLimiter(redis_server.url, prefix="blip" + uuid.uuid4().hex[:6], on_error="open")
        slot = await rl.enter("k", 1, rpm=100, tpm=1000, cap=5)
        rl._down_until = time.monotonic() + 60  # a failure a moment ago: other calls skip Redis now
        await rl.release("k", slot)
        rl._down_until = 0.0
        assert await rl.in_flight("k") == 0

        real = rl._enter

        async def lost_reply(keys, args):
            await real(keys=keys, args=args)  # Redis takes the slot ...
            raise RedisTimeout("reply lost")  # ... and the answer never arrives

        rl._enter = lost_reply
        local = await rl.enter("k", 1, rpm=100, tpm=1000, cap=5)
        rl._enter, rl._down_until = real, 0.0  # Redis answers again
        assert local.startswith("local:") and await rl.in_flight("k") == 2  # the lost one, the local one
        await rl.release("k", local)
        assert await rl.in_flight("k") == 0 and not rl._orphans
        await rl.close()

    run(body)


def test_a_refusal_that_is_only_counted_keeps_its_own_answer_when_redis_is_down():
    from serving.engine import free_port

    async def body():
        rl = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", on_error="closed", timeout_s=0.2)
        await rl.count_refused("k")  # no 503 raised: the caller answers its 400
        await rl.close()

    run(body)


def test_memory_usage_keeps_today_when_a_request_of_yesterday_is_recorded_late():
    from serving.gateway.usage import MemoryUsage, increments, last_days

    today = 1_800_000_000.0
    usage = MemoryUsage(keep_days=3)
    usage.add("k", today, increments(200, 5, 5))
    usage.add("k", today - 86400, increments(200, 1, 1))  # a stream that began before midnight ends now
    days = last_days(today, 2)
    got = run(lambda: usage.read("k", days))
    assert got[days[0]]["requests"] == 1 and got[days[1]]["requests"] == 1
