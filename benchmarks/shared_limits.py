"""Shared limits benchmark (issue #20): what the Redis-backed limiter costs per request, and whether two
gateway processes hold one key's limit together.

1. Per request, the gateway's limiter steps on the answer's path (rate check before the body; concurrency
   slot + rate/token admission in one step) and the slot's release, against the in-memory store and a real
   ``redis-server`` on loopback, sequential and with 32 requests in flight. Baseline: the in-memory store in
   the same run.
2. Two processes (two gateways' limiters) fire requests of one key as fast as they can at a configured rpm:
   admitted requests vs the limit, with Redis and, as the baseline, in memory (each process its own limits).

Writes benchmarks/results/shared_limits.{json,md}; goals: Redis adds <= 1 ms p50 per request; two gateways
admit within 5% of the configured rpm.

    python benchmarks/shared_limits.py [--requests 3000] [--rpm 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/serving.py shares its name with a project package: import the package, not that script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
RESULTS = ROOT / "benchmarks" / "results"


def limiter(kind: str, url: str | None, prefix: str):
    from serving.gateway.limits import RateLimiter, RedisLimiter

    # closed: a Redis failure must show as errors here, not be hidden by the local fallback
    return RateLimiter() if kind == "memory" else RedisLimiter(url, prefix=prefix, on_error="closed")


async def one_request(rl, key: str) -> tuple[float, float]:
    """The gateway's limiter steps for one request: (seconds on the answer's path, seconds of the release).
    The answer waits for the rate check before the body and for the slot + admission; with Redis the
    gateway gives the slot back in a task the answer does not wait for."""
    t0 = time.perf_counter()
    await rl.check_rate(key, 10**9)
    slot = await rl.enter(key, 100, rpm=10**9, tpm=10**12, cap=10**6)
    t1 = time.perf_counter()
    await rl.release(key, slot)
    return t1 - t0, time.perf_counter() - t1


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def cost(kind: str, url: str | None, n: int, concurrency: int) -> dict:
    rl = limiter(kind, url, "bench-" + uuid.uuid4().hex[:8])
    keys = [f"key-{i}" for i in range(8)]
    for i in range(200):  # warm-up: connections, script loading
        await one_request(rl, keys[i % 8])
    times: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    for start in range(0, n, concurrency):
        batch = [one_request(rl, keys[i % 8]) for i in range(start, min(n, start + concurrency))]
        times += await asyncio.gather(*batch)
    wall = time.perf_counter() - t0
    await rl.close()
    ms = [a * 1000 for a, _ in times]
    release = [r * 1000 for _, r in times]
    return {"store": kind, "concurrency": concurrency, "requests": n, "p50_ms": round(statistics.median(ms), 4),
            "p95_ms": round(pct(ms, 0.95), 4), "p99_ms": round(pct(ms, 0.99), 4),
            "release_p50_ms": round(statistics.median(release), 4), "requests_per_s": round(n / wall)}


def _hammer(kind: str, url: str | None, prefix: str, rpm: int, n: int, out, start) -> None:
    async def run() -> int:
        rl = limiter(kind, url, prefix)
        await rl.check_rate("warm-up", 10**9)  # connected and scripts loaded before the race
        start.wait(60)  # both processes begin together
        sem = asyncio.Semaphore(16)

        async def one() -> bool:
            from serving.gateway.errors import APIError

            async with sem:
                try:
                    await rl.admit("team", 10, rpm=rpm, tpm=10**9)
                    return True
                except APIError as e:
                    if e.status != 429:
                        raise
                    return False

        admitted = sum(await asyncio.gather(*(one() for _ in range(n))))
        await rl.close()
        return admitted

    out.put(asyncio.run(run()))


def two_gateways(kind: str, url: str | None, rpm: int) -> dict:
    ctx = mp.get_context("spawn")
    q, start = ctx.Queue(), ctx.Barrier(2)
    prefix = "two-" + uuid.uuid4().hex[:8]
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_hammer, args=(kind, url, prefix, rpm, 2 * rpm, q, start)) for _ in range(2)]
    for p in procs:
        p.start()
    admitted = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    total = sum(admitted)
    return {"store": kind, "rpm": rpm, "sent": 4 * rpm, "admitted_per_gateway": admitted, "admitted": total,
            "error_vs_rpm": round(abs(total - rpm) / rpm, 4), "wall_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per cost measurement")
    ap.add_argument("--rpm", type=int, default=300, help="the key's limit in the two-gateway run")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from live_servers import RedisServer

    from llmops.hardware import cpu_summary

    server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-")))
    try:
        costs = [asyncio.run(cost(kind, server.url, a.requests, c)) for c in (1, 32) for kind in ("memory", "redis")]
        limits = [two_gateways(kind, server.url, a.rpm) for kind in ("memory", "redis")]
    finally:
        server.stop()
    by = {(c["store"], c["concurrency"]): c for c in costs}
    added = round(by[("redis", 1)]["p50_ms"] - by[("memory", 1)]["p50_ms"], 4)
    redis_two = next(r for r in limits if r["store"] == "redis")
    goals = {"redis_added_p50_ms_per_request": {"value": added, "goal": "<= 1", "met": added <= 1},
             "two_gateways_error_vs_rpm": {"value": redis_two["error_vs_rpm"], "goal": "<= 0.05",
                                           "met": redis_two["error_vs_rpm"] <= 0.05}}
    payload = {"cost": costs, "two_gateways": limits, "goals": goals, "machine": cpu_summary(),
               "redis": "redis-server from Debian's package, loopback, no persistence"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shared_limits.json").write_text(json.dumps(payload, indent=2))
    lines = ["# Shared limits: Redis vs in memory", "", f"Machine: {payload['machine']}", "",
             "Per request, on the answer's path: the rate check before the body, then the concurrency slot and "
             "the rate/token admission (one step, one round trip with Redis); the slot's release comes after "
             "(with Redis in a task the answer does not wait for). The store on loopback; the client, the "
             "gateway's limiter code and redis-server share the 2 cores.", "",
             "| store | requests in flight | p50 ms | p95 ms | p99 ms | release p50 ms | requests/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {c['store']} | {c['concurrency']} | {c['p50_ms']} | {c['p95_ms']} | {c['p99_ms']} | "
              f"{c['release_p50_ms']} | {c['requests_per_s']} |" for c in costs]
    lines += ["", f"Two processes, one key at {a.rpm} rpm, {2 * a.rpm} requests each, 16 in flight per process:", "",
              "| store | admitted (per gateway) | admitted | error vs rpm |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['store']} | {r['admitted_per_gateway']} | {r['admitted']} | {r['error_vs_rpm']:.1%} |"
              for r in limits]
    lines += ["", "| goal | value | target | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {g['value']} | {g['goal']} | {'yes' if g['met'] else 'NO'} |" for k, g in goals.items()]
    (RESULTS / "shared_limits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
