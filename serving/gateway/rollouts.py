"""The gateway's side of a rollout: which version answers a request, the shadow requests, and the decision.

:class:`Rollouts` follows the rollouts in the registry (``serving.rollout``) from the poller thread: for a
running one it loads the challenger into the engines next to the champion and routes the canary share of
users to it; when the rollout ends, the challenger leaves the traffic. Shadow requests go through a bounded
queue to a few workers after the champion's answer is sent, so they never delay it; a full queue drops them
(counted). With ``rollout.decide`` the poller also decides, from this gateway's request log::

    rollouts = Rollouts(state)
    rollouts.sync()                          # poller: follow the registry
    route = rollouts.pick(route, sticky)     # request: champion or challenger
    rollouts.decide()                        # poller: promote / roll back / expire
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from llmops.contracts import RequestRecord, VerdictRecord, read_feedback, read_request_log
from llmops.degenerate import degenerate_flags
from serving.rollout import Rollout, RolloutStore, apply_decision, decide, version_stats

log = logging.getLogger(__name__)


@dataclass
class Active:
    rollout: Rollout
    challenger: Any  # the ModelRoute of the challenger version
    registry_name: str


class Rollouts:
    def __init__(self, state) -> None:
        self.state = state
        self.cfg = state.cfg.rollout
        self.store = RolloutStore(state.registry) if state.registry is not None else None
        self.active: dict[str, Active] = {}  # public model id -> its running rollout (replaced whole, never edited)
        self.shadow = ShadowRunner(state, self.cfg.shadow_queue, self.cfg.shadow_concurrency)
        self.decisions: list[tuple[str, str, str]] = []  # (model, action, reason) taken by this gateway

    def champion_adapters(self) -> list:
        return [a for a in self.state.cfg.adapters if a.alias == "champion"]

    # ----------------------------------------------------------------------------- poller thread
    def sync(self) -> None:
        """Follow the registry: load the challenger of each running rollout; take ended ones out of traffic."""
        if self.store is None:
            return
        state = self.state
        active, retire = dict(self.active), []
        for a in self.champion_adapters():
            try:
                rollout = self.store.get(a.registry_name)
            except Exception as e:  # noqa: BLE001 - keep serving what runs
                log.warning("could not read the rollout of %s: %s", a.registry_name, e)
                continue
            current = active.get(a.public_name)
            if rollout is not None and rollout.running:
                if current is not None and current.rollout.id == rollout.id:
                    continue
                group = a.base or state.cfg.engines[0].served_name
                try:
                    version = state.registry.get_version(a.registry_name, rollout.challenger, with_path=True)
                except Exception as e:  # noqa: BLE001
                    log.error("rollout %s: challenger %s/%s not found: %s", rollout.id, a.registry_name,
                              rollout.challenger, e)
                    continue
                route = state.load_version(a, group, version)
                if route is None:
                    continue  # logged; tried again at the next poll
                if current is not None:
                    retire.append(current)
                active[a.public_name] = Active(rollout, route, a.registry_name)
                log.info("rollout %s: %s v%s answers %g%% of %s's users (shadow %g%%)", rollout.id, a.registry_name,
                         rollout.challenger, rollout.canary, a.public_name, rollout.shadow)
            elif current is not None:
                del active[a.public_name]
                retire.append(current)
                log.info("rollout %s of %s ended (%s): the challenger is out of traffic", current.rollout.id,
                         a.registry_name, rollout.state if rollout else "removed")
        self.active = active
        for current in retire:  # after the switch: a promoted challenger is the champion's now, and stays
            self.state.retire(current.challenger)

    def decide(self) -> list[tuple[str, str, str]]:
        """Decide each running rollout from the request log; carry out promote / rollback / expire. Returns the
        decisions taken now (model, action, reason)."""
        if not self.cfg.decide or self.store is None or not self.active:
            return []
        rl = self.state.requestlog
        if rl is None:
            log.warning("rollouts run but request_log is disabled: nothing to decide on")
            return []
        taken = []
        for public, act in list(self.active.items()):
            rollout = self.store.get(act.registry_name)
            if rollout is None or rollout.id != act.rollout.id or not rollout.running:
                continue  # ended elsewhere (CLI, another gateway): sync() takes it out
            rl.flush(2)
            models = {a.public_name for a in self.champion_adapters() if a.registry_name == act.registry_name}
            stats = version_stats(read_request_log(rl.path, since=rollout.started), rollout, models,
                                  read_feedback(rl.path, since=rollout.started))
            decision = decide(rollout, stats, self.cfg)
            if decision.action == "continue":
                continue
            apply_decision(self.store, rollout, decision)
            log.warning("rollout %s of %s: %s: %s", rollout.id, act.registry_name, decision.action, decision.reason)
            taken.append((public, decision.action, decision.reason))
        if taken:
            self.decisions.extend(taken)
            self.state.sync_adapters()  # a promoted challenger becomes the champion before it leaves the canary
            self.sync()
        return taken

    # ----------------------------------------------------------------------------- request path
    def pick(self, route, sticky: str):
        """The route that answers: the challenger's for the canary share of users, else ``route``."""
        act = self.active.get(route.public)
        if act is None or route.kind != "adapter":
            return route
        return act.challenger if act.rollout.arm(sticky) == "challenger" else route

    def shadow_route(self, route, request_id: str):
        """The challenger's route when this champion request is to be shadowed, else None."""
        act = self.active.get(route.public)
        if act is None or route is act.challenger or not act.rollout.shadowed(request_id):
            return None
        return act.challenger

    def upstreams(self) -> set[str]:
        return {a.challenger.upstream for a in self.active.values()}


class ShadowRunner:
    """Sends shadow requests to the challenger after the champion answered: a bounded queue, a few workers;
    the answer is judged (output rails, degenerate) and written to the request log with ``shadow=1``, never
    returned. Nothing it does reaches the user's request."""

    def __init__(self, state, max_queue: int, concurrency: int) -> None:
        self.state = state
        self.max_queue, self.concurrency = max_queue, concurrency
        self.queue: asyncio.Queue | None = None
        self.workers: list[asyncio.Task] = []
        self.dropped = self.sent = self.failed = 0

    def submit(self, route, path: str, body: dict, key_id: str | None, question: str | None, chat: bool) -> bool:
        """Queue a shadow request (from the event loop); False when the queue is full (dropped, counted)."""
        if self.queue is None:
            self.queue = asyncio.Queue(self.max_queue)
            loop = asyncio.get_running_loop()
            self.workers = [loop.create_task(self._work()) for _ in range(self.concurrency)]
        try:
            self.queue.put_nowait((route, path, body, key_id, question, chat))
        except asyncio.QueueFull:
            self.dropped += 1
            self.state.metrics.shadow.labels(route.public, route.registry_version or "", "dropped").inc()
            return False
        return True

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self._run(*job)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a failing shadow is recorded, never raised
                log.warning("shadow request failed: %s", e)
            finally:
                self.queue.task_done()

    async def _run(self, route, path: str, body: dict, key_id: str | None, question: str | None, chat: bool) -> None:
        from serving.gateway.handler import guard_call

        state, hook = self.state, self.state.hook
        rec = RequestRecord(id=f"shadow-{time.time_ns():x}", ts=time.time(), endpoint="chat" if chat else "completions",
                            key_id=key_id, model=route.public, registry_version=route.registry_version, shadow=1)
        t0 = time.perf_counter()
        payload = {**body, "model": route.upstream, "stream": False}
        payload.pop("stream_options", None)
        resp = None
        outcome = "ok"
        try:
            resp, _ = await state.router.send(route.group, path, json.dumps(payload).encode())
            raw = await resp.aread()
            rec.status = 200 if resp.status_code < 400 else 502  # an engine that refuses the challenger: its error
            if resp.status_code >= 400:
                rec.error_code, outcome = "engine_error", "error"
            else:
                data = json.loads(raw)
                usage = data.get("usage") or {}
                rec.prompt_tokens, rec.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
                flags = []
                for choice in data.get("choices") or []:
                    text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
                    rec.finish_reason = rec.finish_reason or choice.get("finish_reason")
                    if not isinstance(text, str):
                        continue
                    if text and not hook.passthrough:
                        out = await guard_call(hook, hook.check_output, text, model=route.public, key=key_id)
                        if out.action != "allow":
                            rec.guardrails.append(VerdictRecord.of("output", out, with_reason=False))
                    flags.append(degenerate_flags(question or "", text)["degenerate"])
                rec.degenerate = int(any(flags)) if flags else None
        except Exception as e:  # noqa: BLE001 - the engine refused or broke: an error of the challenger
            rec.status, rec.error_code, outcome = 502, "engine_error", "error"
            log.info("shadow request to %s failed: %s", route.upstream, e)
        finally:
            if resp is not None:
                await resp.aclose()
        rec.latency_ms = (time.perf_counter() - t0) * 1000
        self.sent += 1
        self.failed += outcome == "error"
        state.metrics.shadow.labels(route.public, route.registry_version or "", outcome).inc()
        if state.requestlog is not None:
            state.requestlog.write(rec)

    async def close(self) -> None:
        for w in self.workers:
            w.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
