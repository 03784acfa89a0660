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
import uuid
from dataclasses import dataclass
from typing import Any

from llmops.contracts import RequestRecord, VerdictRecord, read_feedback, read_request_log
from llmops.degenerate import degenerate_flags
from serving.rollout import BASE, BASE_LABEL, Rollout, RolloutStore, apply_decision, decide, version_stats

log = logging.getLogger(__name__)
MAX_LOAD_FAILURES = 3
STATS_COLUMNS = ["model", "registry_version", "status", "error_code", "engine_status", "shadow", "degenerate",
                 "guardrails", "latency_ms", "ttft_ms", "completion_tokens"]


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
        self.shadow = ShadowRunner(state, self.cfg.shadow_queue, self.cfg.shadow_concurrency,
                                   self.cfg.shadow_max_inflight)
        self.decisions: list[tuple[str, str, str]] = []  # (model, action, reason) taken by this gateway
        # rollout id -> (polls in a row the engines refused its challenger, when the last one was counted)
        self._load_failures: dict[str, tuple[int, float]] = {}
        self._last_decide = 0.0

    def champion_adapters(self) -> list:
        return [a for a in self.state.cfg.adapters if a.alias == "champion"]

    # ----------------------------------------------------------------------------- poller thread
    def sync(self) -> None:
        """Follow the registry: load the challenger of each running rollout; take ended ones out of traffic. A
        challenger the engines refuse MAX_LOAD_FAILURES polls in a row ends its rollout (rolled back, when this
        gateway decides)."""
        if self.store is None:
            return
        active, retire, seen = dict(self.active), [], set(self._load_failures)
        for a in self.champion_adapters():
            try:
                rollout = self.store.get(a.registry_name)
            except Exception as e:  # noqa: BLE001 - keep serving what runs
                log.warning("could not read the rollout of %s: %s", a.registry_name, e)
                continue
            if rollout is not None and rollout.running:
                seen.discard(rollout.id)
            current = active.get(a.public_name)
            if current is not None and (rollout is None or not rollout.running or rollout.id != current.rollout.id):
                del active[a.public_name]  # ended, or replaced: out of traffic before anything else is tried
                retire.append((current, rollout))
                log.info("rollout %s of %s ended (%s): the challenger is out of traffic", current.rollout.id,
                         a.registry_name, rollout.state if rollout and rollout.id == current.rollout.id else "replaced")
                current = None
            if rollout is None or not rollout.running or current is not None:
                continue
            route = self._load(a, rollout)
            if route is None:
                self._expire_unloaded(a, rollout)
                continue
            if rollout.champion == BASE:
                self._serve_base(a)
            active[a.public_name] = Active(rollout, route, a.registry_name)
            log.info("rollout %s: %s v%s answers %g%% of %s's users (shadow %g%%)", rollout.id, a.registry_name,
                     rollout.challenger, rollout.canary, a.public_name, rollout.shadow)
        self.active = active
        for rid in seen:  # counted failures of rollouts that ended meanwhile
            self._load_failures.pop(rid, None)
        for current, now in retire:  # after the switch: a promoted challenger is the champion's now, and stays
            self.state.retire(current.challenger)
            self._end_base(current, now, active)

    def _end_base(self, current: Active, now: Rollout | None, active: dict[str, Active]) -> None:
        """After a first release's rollout: promoted, the public name goes to the new champion (loaded now, whoever
        promoted it; the base model answers until it is in); otherwise the name had no champion before and is not
        served again."""
        public = current.challenger.public
        route = self.state.models.get(public)
        if route is None or route.registry_version != BASE_LABEL or public in active:
            return
        ended = now is not None and now.id == current.rollout.id
        if ended and now.state == "promoted":
            self.state.sync_adapters()  # promoted by the CLI or another gateway since this poll's sync_adapters
            return
        if self.state.models.get(public) is route:
            del self.state.models[public]
            log.info("%s: no champion; the name is not served until one is set", public)

    def _serve_base(self, a) -> None:
        """A first release (no champion yet): the base model answers the champion's share under the public name."""
        from serving.gateway.state import ModelRoute

        state = self.state
        if state.models.get(a.public_name) is not None:
            return  # a champion resolved meanwhile (the rollout's promotion check then stops it), or set already
        group = a.base or state.cfg.engines[0].served_name
        state.models[a.public_name] = ModelRoute(a.public_name, "adapter", group, group,
                                                 state.models[group].max_model_len, BASE_LABEL, int(time.time()))

    def _expire_unloaded(self, a, rollout: Rollout) -> None:
        """A rollout whose challenger never made it into the engines still ends at ``max_minutes`` (when this
        gateway decides): it must not block the next one."""
        if not self.cfg.decide or time.time() - rollout.started <= rollout.max_minutes * 60:
            return
        from serving.rollout import Decision, VersionStats

        reason = (f"rollout {rollout.id}: v{rollout.challenger} was not loaded into the engines within "
                  f"{rollout.max_minutes:g} min; no alias moves")
        try:
            ended = apply_decision(self.store, rollout, Decision("expire", reason, [], VersionStats(rollout.champion),
                                                                 VersionStats(rollout.challenger)))
            if ended.id == rollout.id and ended.state == "expired" and ended.reason == reason:
                self.decisions.append((a.public_name, "expire", reason))
                log.warning("%s", reason)
        except Exception as e:  # noqa: BLE001
            log.warning("could not end rollout %s: %s", rollout.id, e)

    def _load(self, a, rollout: Rollout):
        """The challenger's route, loaded into the engines; None when that failed. An engine that answered the load
        with an error (``AdapterRefused``) counts, once per poll; after MAX_LOAD_FAILURES polls in a row a deciding
        gateway rolls the rollout back. Engines not ready (restarting) and registry hiccups are tried again later,
        uncounted: a short outage must not end a good challenger's rollout."""
        from serving.engine import AdapterRefused

        state, group = self.state, a.base or self.state.cfg.engines[0].served_name
        if any(e.state != "ready" for e in state.router.groups.get(group, [])):
            return None  # an engine is (re)starting: it gets the challenger once it is up
        try:
            version = state.registry.get_version(a.registry_name, rollout.challenger, with_path=True)
            route = state.load_version(a, group, version, raise_errors=True)
        except AdapterRefused as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - the registry or an engine did not answer: next poll
            log.warning("rollout %s: challenger %s/%s not loaded yet: %s", rollout.id, a.registry_name,
                        rollout.challenger, e)
            return None
        else:
            self._load_failures.pop(rollout.id, None)
            return route
        now = time.monotonic()
        failures, last = self._load_failures.get(rollout.id, (0, -1e9))
        if now - last >= self.state.cfg.rollout_poll_s / 2:  # sync() may run twice in one poll (after a decision)
            failures, last = failures + 1, now
            self._load_failures[rollout.id] = (failures, last)
        log.error("rollout %s: the engines refused challenger %s/%s (%d/%d): %s", rollout.id, a.registry_name,
                  rollout.challenger, failures, MAX_LOAD_FAILURES, error)
        if failures >= MAX_LOAD_FAILURES and self.cfg.decide:
            from serving.rollout import Decision, VersionStats

            reason = (f"rollout {rollout.id}: the engines refused v{rollout.challenger} {failures} times: {error}")
            decision = Decision("rollback", reason, [], VersionStats(rollout.champion),
                                VersionStats(rollout.challenger))
            try:
                ended = apply_decision(self.store, rollout, decision)
                if ended.id == rollout.id and ended.state == "rolled_back" and ended.reason == reason:
                    self.decisions.append((a.public_name, "rollback", reason))
                self._load_failures.pop(rollout.id, None)
            except Exception as e:  # noqa: BLE001
                log.warning("could not end rollout %s: %s", rollout.id, e)
        return None

    def decide(self, now: float | None = None) -> list[tuple[str, str, str]]:
        """Decide each running rollout from the request log (at most every ``rollout.decide_every_s``); carry out
        promote / rollback / expire. Returns the decisions taken now (model, action, reason)."""
        if not self.cfg.decide or self.store is None or not self.active:
            return []
        now = time.monotonic() if now is None else now
        if now - self._last_decide < self.cfg.decide_every_s:
            return []
        self._last_decide = now
        rl = self.state.requestlog
        if rl is None:
            log.warning("rollouts run but request_log is disabled: nothing to decide on")
            return []
        taken = []
        for public, act in list(self.active.items()):
            try:
                decision = self._decide_one(act, rl)
            except Exception as e:  # noqa: BLE001 - one rollout's trouble does not stop the others
                log.warning("rollout %s: no decision this time: %s", act.rollout.id, e)
                continue
            if decision is not None:
                taken.append((public, decision.action, decision.reason))
        if taken:
            self.decisions.extend(taken)
            self.state.sync_adapters()  # a promoted challenger becomes the champion before it leaves the canary
            self.sync()
        return taken

    def _decide_one(self, act: Active, rl):
        rollout = self.store.get(act.registry_name)
        if rollout is None or rollout.id != act.rollout.id or not rollout.running:
            return None  # ended elsewhere (CLI, another gateway): sync() takes it out
        if rollout.champion == BASE and self.store.registry.alias_version(act.registry_name, "champion") is not None:
            from serving.rollout import Decision, VersionStats, end_rollout

            # set by hand meanwhile: that version answers the champion's share now, not the base model
            reason = (f"rollout {rollout.id}: a champion was set during this first release; the comparison with the "
                      "base model no longer holds (start a new rollout against the champion)")
            ended = end_rollout(self.store, rollout, "stopped", reason)
            log.warning("%s", reason)
            return Decision("stop", ended.reason, [], VersionStats(BASE), VersionStats(rollout.challenger))
        rl.flush(1.0)
        models = sorted({a.public_name for a in self.champion_adapters() if a.registry_name == act.registry_name})
        requests = read_request_log(rl.path, since=rollout.started, columns=STATS_COLUMNS, models=models)
        stats = version_stats(requests, rollout, set(models), read_feedback(rl.path, since=rollout.started))
        decision = decide(rollout, stats, self.cfg)
        if decision.action == "continue":
            return None
        ended = apply_decision(self.store, rollout, decision)  # re-reads the rollout first: one decision wins
        if ended.id != rollout.id or ended.state == "running" or ended.reason != decision.reason:
            return None
        log.warning("rollout %s of %s: %s: %s", rollout.id, act.registry_name, decision.action, decision.reason)
        return decision

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
        if act is None or route.upstream == act.challenger.upstream or not act.rollout.shadowed(request_id):
            return None
        return act.challenger

    def upstreams(self) -> set[str]:
        return {a.challenger.upstream for a in self.active.values()}


class ShadowRunner:
    """Sends shadow requests to the challenger after the champion answered: a bounded queue, a few workers;
    the answer is judged (output rails, degenerate) and written to the request log with ``shadow=1``, never
    returned. Nothing it does reaches the user's request. With ``max_inflight`` a shadow yields to users: it
    waits in the queue while more than that many user requests per replica are in flight on its engines."""

    IDLE_POLL_S = 0.05

    def __init__(self, state, max_queue: int, concurrency: int, max_inflight: int | None = None) -> None:
        self.state = state
        self.max_queue, self.concurrency, self.max_inflight = max_queue, concurrency, max_inflight
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
            self.state.metrics.shadow_pending.inc()
        except asyncio.QueueFull:
            self.dropped += 1
            self.state.metrics.shadow.labels(route.public, route.registry_version or "", "dropped").inc()
            return False
        return True

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                while self.max_inflight is not None and self.state.busy(job[0].group, self.max_inflight):
                    await asyncio.sleep(self.IDLE_POLL_S)
                await self._run(*job)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a failing shadow is recorded, never raised
                log.warning("shadow request failed: %s", e)
            finally:
                self.queue.task_done()
                self.state.metrics.shadow_pending.dec()

    async def _run(self, route, path: str, body: dict, key_id: str | None, question: str | None, chat: bool) -> None:
        from serving.gateway.errors import APIError
        from serving.gateway.handler import ANSWER_CHARS, guard_call

        state, hook = self.state, self.state.hook
        if route.upstream not in state.rollouts.upstreams():
            return  # the rollout ended while this waited: its challenger may be unloaded by now
        rec = RequestRecord(id=f"shadow-{uuid.uuid4().hex}", ts=time.time(), endpoint="chat" if chat else "completions",
                            key_id=key_id, model=route.public, registry_version=route.registry_version, shadow=1)
        t0 = time.perf_counter()
        payload = {**body, "model": route.upstream, "stream": False}
        payload.pop("stream_options", None)
        resp = None
        outcome = "ok"
        try:
            resp, _ = await state.router.send(route.group, path, json.dumps(payload).encode())
            raw = await resp.aread()
            rec.engine_status = resp.status_code
            rec.status = 200 if resp.status_code < 400 else 502  # an engine that refuses the challenger: its error
            if resp.status_code >= 400:
                rec.error_code, outcome = "engine_error", "error"
            else:
                data = json.loads(raw)
                usage = data.get("usage") or {}
                rec.prompt_tokens, rec.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
                flags = []
                for choice in data.get("choices") or []:
                    message = choice.get("message") or {}
                    text = message.get("content") if chat else choice.get("text")
                    rec.finish_reason = rec.finish_reason or choice.get("finish_reason")
                    if not isinstance(text, str) or message.get("tool_calls") or \
                            choice.get("finish_reason") in ("tool_calls", "content_filter"):
                        continue  # judged like the champion's answers: tool calls are no answer text
                    blocked = False
                    if text and not hook.passthrough:
                        out = await guard_call(hook, hook.check_output, text, model=route.public, key=key_id)
                        if out.action != "allow":
                            rec.guardrails.append(VerdictRecord.of("output", out, with_reason=False))
                            blocked = not out.allowed
                    if not blocked:
                        flags.append(degenerate_flags(question or "", text[:ANSWER_CHARS])["degenerate"])
                rec.degenerate = int(any(flags)) if flags else None
        except APIError as e:
            if e.status == 504:  # the engine took it and did not answer in time: the challenger's error
                rec.status, rec.error_code, outcome = 504, "engine_timeout", "error"
            else:  # the gateway had no engine or connection free: not the challenger's doing
                self.dropped += 1
                state.metrics.shadow.labels(route.public, route.registry_version or "", "dropped").inc()
                log.info("shadow request not sent (%s)", e.code)
                return
        except Exception as e:  # noqa: BLE001 - the engine broke off: an error of the challenger
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
