"""Gateway under load and abuse, with the real vLLM engine behind it (issue #16's goals), one run.

1. mixed: 500 requests at concurrency 64, chat and completions, half of them streamed: every one must
   be answered 200 (streams end with [DONE] and no error event);
2. big request: the p99 latency of small requests, unloaded, then again while a client keeps sending
   ~2 MB prompt-list requests (refused after tokenising off the event loop): the goal is at most 2x;
3. hostile: a few hundred malformed or abusive requests (bad JSON, wrong types, deep nesting, huge
   numbers, unknown models, bad keys, token ids outside the vocabulary, odd content parts ...): 0 answers
   of 5xx, every one OpenAI-shaped, and the request log records the status each client got.

Writes benchmarks/results/gateway_load.{json,md} with the machine's CPU flags.

    python benchmarks/gateway_load.py
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serving import free_port, goal_table, wait_http, write_markdown  # noqa: E402  (the benchmark module)

KEY = "sk-load-bench"
# the client that sends the 2 MB requests has its own key, with the shipped default limit of 600 requests a
# minute (the other clients' key is unlimited): past it, its requests are refused before their body is read
ABUSER_KEY, ABUSER_RPM = "sk-load-bench-big", 600
RESULTS = ROOT / "benchmarks" / "results"


def chat(i: int, stream: bool) -> tuple[str, dict]:
    return "/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": f"Tell me fact {i}."}],
                                    "max_tokens": 16 + i % 17, "stream": stream}


def completion(i: int, stream: bool) -> tuple[str, dict]:
    return "/v1/completions", {"model": "smollm2", "prompt": f"Fact number {i} about the sea:", "max_tokens": 16,
                               "stream": stream}


async def one(client: httpx.AsyncClient, path: str, body, headers=None, raw: bytes | None = None) -> dict:
    """Send one request; (status, seconds, error text if any, request id)."""
    t = time.perf_counter()
    h = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    kw = {"content": raw} if raw is not None else {"json": body}
    try:
        if isinstance(body, dict) and body.get("stream"):
            async with client.stream("POST", path, headers=h, **kw) as r:
                text = "".join([line async for line in r.aiter_lines()])
                ok = r.status_code == 200 and "[DONE]" in text and '"error"' not in text
                return {"status": r.status_code, "s": time.perf_counter() - t, "ok": ok,
                        "id": r.headers.get("x-request-id")}
        r = await client.post(path, headers=h, **kw)
        shaped = True
        if r.status_code != 200:
            try:
                err = r.json()["error"]
                shaped = all(k in err for k in ("message", "type", "code"))
            except (ValueError, KeyError, TypeError):
                shaped = False
        return {"status": r.status_code, "s": time.perf_counter() - t, "ok": r.status_code == 200, "shaped": shaped,
                "id": r.headers.get("x-request-id")}
    except httpx.HTTPError as e:
        return {"status": 0, "s": time.perf_counter() - t, "ok": False, "error": type(e).__name__}


async def mixed(base: str, n: int, concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=httpx.Limits(max_connections=concurrency)) as c:
        async def run(i):
            async with sem:
                path, body = (chat if i % 2 else completion)(i, stream=i % 4 < 2)
                return await one(c, path, body)
        t = time.perf_counter()
        res = await asyncio.gather(*(run(i) for i in range(n)))
        wall = time.perf_counter() - t
    errors = [r for r in res if not r["ok"]]
    return {"requests": n, "concurrency": concurrency, "errors": len(errors), "wall_s": round(wall, 1),
            "statuses": sorted({r["status"] for r in res}), "p50_s": round(statistics.median(r["s"] for r in res), 3)}


async def small_latencies(c: httpx.AsyncClient, n: int) -> list[float]:
    out = []
    for i in range(n):
        r = await one(c, "/v1/chat/completions", {"model": "smollm2", "max_tokens": 4,
                                                  "messages": [{"role": "user", "content": f"Say {i}."}]})
        out.append(r["s"])
    return out


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


async def big_request(base: str, n_small: int, interval: float) -> dict:
    """p99 of small chats, unloaded and while another key sends 2 MB prompt lists, one every ``interval`` s (0:
    back to back, as fast as the client can push 2 MB over loopback)."""
    prompts = ["word " * 6000] * 64  # 64 prompts (the cap) of ~30k characters: ~2 MB, tokenised off the loop
    async with httpx.AsyncClient(base_url=base, timeout=300) as c:
        await small_latencies(c, 5)  # warm
        unloaded = await small_latencies(c, n_small)
        stop = asyncio.Event()
        big_statuses: list[int] = []

        async def hammer():
            async with httpx.AsyncClient(base_url=base, timeout=300) as c2:
                # encoded once: the client's own JSON encoding (~8 ms a request) must not compete with the engine
                raw = json.dumps({"model": "smollm2", "prompt": prompts, "max_tokens": 1}).encode()
                while not stop.is_set():
                    r = await one(c2, "/v1/completions", None, {"content-type": "application/json",
                                                                     "Authorization": f"Bearer {ABUSER_KEY}"}, raw=raw)
                    big_statuses.append(r["status"])
                    if interval:
                        await asyncio.sleep(interval)

        task = asyncio.create_task(hammer())
        await asyncio.sleep(1)
        loaded = await small_latencies(c, n_small)
        stop.set()
        await task
    return {"small_requests": n_small, "unloaded_p99_s": round(p99(unloaded), 3), "loaded_p99_s": round(p99(loaded), 3),
            "ratio": round(p99(loaded) / p99(unloaded), 2), "big_requests_sent": len(big_statuses),
            "big_request_statuses": sorted(set(big_statuses)), "interval_s": interval,
            "body_mb": round(len(json.dumps(prompts)) / 2**20, 2)}


def hostile_cases() -> list[tuple[str, dict | None, bytes | None, dict]]:
    """(path, json body or None, raw body or None, extra headers)."""
    rng = random.Random(0)
    deep = "[" * 5000 + '"x"' + "]" * 5000  # deeper than json.dumps can write
    cases: list[tuple[str, dict | None, bytes | None, dict]] = [
        ("/v1/chat/completions", None, b"{not json", {}),
        ("/v1/chat/completions", None, b"\xff\xfe\x00garbage", {}),
        ("/v1/chat/completions", None, ('{"model": "smollm2", "messages": ' + deep + "}").encode(), {}),
        ("/v1/chat/completions", None, b"[]", {}),
        ("/v1/chat/completions", None, b"null", {}),
        ("/v1/chat/completions", None, b"x" * 3_000_000, {}),
        ("/v1/chat/completions", {"model": "smollm2", "messages": []}, None, {}),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, None, {}),
        ("/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}, None,
         {"Authorization": "Bearer wrong"}),
        ("/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}, None,
         {"Authorization": ""}),
        ("/v1/completions", {"model": "smollm2", "prompt": [10 ** 12]}, None, {}),
        ("/v1/completions", {"model": "smollm2", "prompt": [[1, 2], "mixed"]}, None, {}),
        ("/v1/completions", {"model": "smollm2", "prompt": ["x"] * 500_000}, None, {}),
        ("/v1/embeddings", {"model": "minilm", "input": [[10 ** 30]]}, None, {}),
        ("/v1/embeddings", {"model": "minilm", "input": ""}, None, {}),
        ("/v1/embeddings", {"model": "minilm", "input": [{"a": 1}]}, None, {}),
    ]
    bad_values = [None, -1, 0, 1e308, "1", [], {}, True, "x" * 10_000, 10 ** 30, float("nan")]
    fields = ["max_tokens", "temperature", "top_p", "n", "stream", "stop", "logit_bias", "tools", "response_format",
              "logprobs", "top_logprobs", "seed", "presence_penalty", "user", "stream_options", "tool_choice",
              "chat_template", "documents", "chat_template_kwargs", "return_token_ids"]
    for f in fields:
        for v in rng.sample(bad_values, 10):
            body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, f: v}
            try:
                raw = json.dumps(body, allow_nan=True).encode()
            except (TypeError, ValueError):
                continue
            cases.append(("/v1/chat/completions", None, raw, {}))
    odd_messages = [
        [{"role": "wizard", "content": "hi"}], [{"role": "user"}], [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "text", "text": 123}]}], [{"role": "user", "content": [5]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
        [{"role": "user", "content": [{"type": "refusal", "refusal": None}]}],
        [{"role": "assistant", "content": None, "tool_calls": "x"}], [{"role": "tool", "content": "x"}],
        ["just a string"], [{"role": "user", "content": "hi", "name": {"a": [1, 2]}}],
    ]
    for m in odd_messages:
        cases.append(("/v1/chat/completions", {"model": "smollm2", "messages": m, "max_tokens": 4}, None, {}))
    return cases


async def hostile(base: str, log_path: Path) -> dict:
    cases = hostile_cases()
    started = time.time()
    got = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as c:
        for path, body, raw, headers in cases:
            r = await one(c, path, body, headers=headers, raw=raw)
            got.append(r)
    five = [r for r in got if r["status"] >= 500 or r["status"] == 0]
    unshaped = [r for r in got if r["status"] != 200 and not r.get("shaped", True)]
    await asyncio.sleep(2)  # the request log writer drains its queue
    from collections import Counter

    from llmops.contracts import read_request_log

    log = read_request_log(log_path)
    logged = Counter(int(s) for s in log[log.ts >= started].status)
    answered = Counter(r["status"] for r in got)
    mismatched = sum(((answered - logged) + (logged - answered)).values())  # statuses answered but not logged, ...
    return {"requests": len(got), "status_counts": {str(s): sum(r["status"] == s for r in got)
                                                     for s in sorted({r["status"] for r in got})},
            "5xx_or_dropped": len(five), "not_openai_shaped": len(unshaped), "log_status_mismatches": mismatched,
            "logged_status_counts": {str(k): v for k, v in sorted(logged.items())}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--small", type=int, default=60, help="small requests timed in each latency phase")
    p.add_argument("--model-dir", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    a = p.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-load-"))
    gw_port = free_port()
    env = dict(os.environ, LLMOPS_API_KEYS=f"load:{KEY}", HF_HUB_OFFLINE="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "llmops", "serve", "--config", str(ROOT / "configs/serving/default.yaml"),
         f"port={gw_port}", f"engines.0.port={free_port()}", f"engines.0.model={a.model_dir}",
         "limits.default_rpm=1000000", "limits.default_tpm=1000000000",
         f"auth.keys=[{{id: big, sha256: {hashlib.sha256(ABUSER_KEY.encode()).hexdigest()}, rpm: {ABUSER_RPM}}}]",
         f"request_log.path={out / 'requests.sqlite'}", "request_log.unauthenticated_sample=1.0"],
        env=env, stdout=(out / "serve.log").open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{gw_port}"
    try:
        print("starting gateway + vLLM ...", flush=True)
        wait_http(base + "/ready")
        print("mixed load ...", flush=True)
        results = {"mixed": asyncio.run(mixed(base, a.requests, a.concurrency))}
        print("big requests vs small ones ...", flush=True)
        results["big_request"] = asyncio.run(big_request(base, a.small, 0.5))
        results["big_request_flood"] = asyncio.run(big_request(base, a.small, 0))
        print("hostile requests ...", flush=True)
        results["hostile"] = asyncio.run(hostile(base, out / "requests.sqlite"))
        alive = httpx.get(base + "/ready", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(60)
    from llmops.hardware import cpu_summary

    m, b, h, f = results["mixed"], results["big_request"], results["hostile"], results["big_request_flood"]
    goals = {"mixed_errors": {"value": m["errors"], "goal": "== 0", "met": m["errors"] == 0},
             "small_p99_ratio_under_2MB_requests (two a second)": {"value": b["ratio"], "goal": "<= 2",
                                                                    "met": b["ratio"] <= 2},
             "hostile_5xx": {"value": h["5xx_or_dropped"], "goal": "== 0", "met": h["5xx_or_dropped"] == 0},
             "hostile_not_openai_shaped": {"value": h["not_openai_shaped"], "goal": "== 0",
                                           "met": h["not_openai_shaped"] == 0},
             "hostile_log_status_mismatches": {"value": h["log_status_mismatches"], "goal": "== 0",
                                               "met": h["log_status_mismatches"] == 0},
             "gateway_ready_afterwards": {"value": alive, "goal": "true", "met": alive}}
    payload = {"results": results, "goals": goals, "machine": cpu_summary()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway_load.json").write_text(json.dumps(payload, indent=2))
    lines = ["# Gateway load and abuse", "", f"Machine: {payload['machine']}", "",
             f"- mixed: {m['requests']} requests at concurrency {m['concurrency']} (chat and completions, half "
             f"streamed): {m['errors']} errors, statuses {m['statuses']}, {m['wall_s']} s, p50 {m['p50_s']} s",
             f"- {b['big_requests_sent']} requests of {b['body_mb']} MB (64 prompts of ~30k characters; statuses "
             f"{b['big_request_statuses']}), two a second, from a key with the default limit of {ABUSER_RPM} "
             f"requests a minute, while {b['small_requests']} small chats ran on another key: their p99 "
             f"{b['loaded_p99_s']} s vs {b['unloaded_p99_s']} s unloaded ({b['ratio']}x)",
             "- the same requests back to back, as fast as the client pushes 2 MB over loopback "
             f"({f['big_requests_sent']} sent, statuses {f['big_request_statuses']}; past the key's limit they are "
             f"refused before the body is read): small-chat p99 {f['loaded_p99_s']} s vs {f['unloaded_p99_s']} s "
             f"({f['ratio']}x). On 2 cores the "
             "client, the gateway and vLLM share the CPU: a flood is a rate-limit and network matter, not a goal here.",
             f"- hostile: {h['requests']} requests, statuses {h['status_counts']}, 5xx or dropped: "
             f"{h['5xx_or_dropped']}, not OpenAI-shaped: {h['not_openai_shaped']}, request-log status mismatches: "
             f"{h['log_status_mismatches']}"]
    write_markdown("gateway_load", lines + goal_table(goals))


if __name__ == "__main__":
    main()
