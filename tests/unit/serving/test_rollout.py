"""Rollouts: the decision rule on real figures, sticky arms, the state in a real registry, figures from a real
request log. The gateway's side against a real engine is in tests/integration/test_serving.py."""

from __future__ import annotations

import time

import numpy as np
import pytest

from llmops.contracts import RequestRecord, VerdictRecord, read_feedback, read_request_log
from serving.gateway.requestlog import RequestLog
from serving.rollout import (
    Margins,
    Rollout,
    RolloutConfig,
    RolloutError,
    RolloutStore,
    VersionStats,
    apply_decision,
    compare,
    decide,
    manual,
    rate_interval,
    start_rollout,
    status_table,
    version_stats,
)

CFG = RolloutConfig()


def rollout(**kw) -> Rollout:
    base = dict(name="m", champion=1, challenger=2, canary=10, shadow=0, min_requests=200, max_minutes=60,
                started=time.time())
    return Rollout(**{**base, **kw})


def arm(version: int, n: int, *, errors=0, degenerate=0, guarded=0, latency=100.0, spread=10.0, seed=0,
        feedback=()) -> VersionStats:
    rng = np.random.default_rng(seed)
    s = VersionStats(version, requests=n, errors=errors, judged=n - errors, degenerate=degenerate,
                     answered=n - errors, guarded=guarded)
    s.latency_ms = list(rng.normal(latency, spread, n - errors).clip(1))
    s.feedback = list(feedback)
    return s


def test_a_challenger_like_the_champion_is_promoted_once_min_requests_is_reached():
    r = rollout()
    early = decide(r, {1: arm(1, 150, degenerate=6, seed=1), 2: arm(2, 150, degenerate=6, seed=2)}, CFG)
    assert early.action == "continue"  # fine so far, but min_requests is 200
    d = decide(r, {1: arm(1, 400, degenerate=16, seed=1), 2: arm(2, 400, degenerate=15, seed=2)}, CFG)
    assert d.action == "promote", d.reason
    assert "no worse" in d.reason and "degenerate_rate" in d.reason  # the audit reason names the figures


def test_a_clearly_worse_challenger_is_rolled_back_at_the_early_look_but_not_before_min_early():
    r = rollout()
    bad = {1: arm(1, 30, degenerate=1), 2: arm(2, 30, degenerate=27)}
    d = decide(r, bad, CFG)
    assert d.action == "rollback" and "early look" in d.reason and "degenerate_rate" in d.reason
    tiny = {1: arm(1, 10, degenerate=0), 2: arm(2, 10, degenerate=10)}
    assert decide(r, tiny, CFG).action == "continue"  # 10 < min_early: no look yet


def test_slightly_worse_by_chance_is_not_rolled_back_early():
    """At the early level a modest difference on a few dozen requests is not enough (no rollback by noise)."""
    d = decide(rollout(), {1: arm(1, 40, degenerate=4), 2: arm(2, 40, degenerate=9)}, CFG)
    assert d.action == "continue"


@pytest.mark.parametrize("figure, champion, challenger", [
    ("error_rate", dict(errors=2), dict(errors=40)),
    ("guardrail_rate", dict(guarded=3), dict(guarded=60)),
    ("latency_p50", dict(latency=100), dict(latency=260)),
])
def test_each_figure_alone_can_roll_a_challenger_back(figure, champion, challenger):
    d = decide(rollout(), {1: arm(1, 300, seed=1, **champion), 2: arm(2, 300, seed=2, **challenger)}, CFG)
    assert d.action == "rollback", d.reason
    worse = [c.metric for c in d.comparisons if c.verdict == "worse"]
    assert worse == [figure]


def test_feedback_is_compared_once_both_versions_have_enough_scores():
    good, poor = [1.0] * 30 + [0.0] * 10, [1.0] * 8 + [0.0] * 32
    d = decide(rollout(), {1: arm(1, 300, seed=1, feedback=good), 2: arm(2, 300, seed=2, feedback=poor)}, CFG)
    assert d.action == "rollback" and "feedback" in d.reason
    few = decide(rollout(), {1: arm(1, 300, seed=1, feedback=good[:5]), 2: arm(2, 300, seed=2, feedback=poor[:5])},
                 CFG)
    assert [c.verdict for c in few.comparisons if c.metric == "feedback"] == ["n/a"]


def test_a_shadow_rollout_is_rolled_back_by_itself_but_promoted_only_by_hand():
    r = rollout(canary=0, shadow=50)
    good = {1: arm(1, 300, degenerate=6, seed=1), 2: arm(2, 300, degenerate=6, seed=2)}
    held = decide(r, good, CFG)
    assert held.action == "continue" and "promote m" in held.reason and "no figure is worse" in held.reason
    late = decide(r, good, CFG, now=r.started + 61 * 60)
    assert late.action == "expire" and "promote by hand" in late.reason
    assert decide(r, {1: arm(1, 300), 2: arm(2, 300, degenerate=120)}, CFG).action == "rollback"


def test_no_decision_in_time_expires_the_rollout():
    r = rollout(started=time.time() - 3601)
    d = decide(r, {1: arm(1, 50), 2: arm(2, 50)}, CFG)
    assert d.action == "expire" and "not enough traffic" in d.reason


def test_the_rate_interval_keeps_its_level():
    """With two equal arms the one-sided upper bound of the difference falls below 0 in about alpha of the
    trials (the test would roll a good challenger back no more often than it says)."""
    rng = np.random.default_rng(7)
    n, p, alpha, trials = 200, 0.1, 0.05, 4000
    k1, k0 = rng.binomial(n, p, trials), rng.binomial(n, p, trials)
    misses = sum(rate_interval(a, n, b, n, alpha)[1] < 0 for a, b in zip(k1, k0, strict=True))
    assert misses / trials <= alpha * 1.3
    lows = sum(rate_interval(a, n, b, n, alpha)[0] > 0 for a, b in zip(k1, k0, strict=True))
    assert lows / trials <= alpha * 1.3
    # at 0 of n on both sides the interval is finite and straddles 0
    low, high = rate_interval(0, 50, 0, 50, alpha)
    assert low < 0 < high


def test_arms_are_sticky_weighted_and_reshuffled_by_a_new_rollout():
    r = rollout(canary=10)
    users = [f"user:{i}" for i in range(20_000)]
    arms = [r.arm(u) for u in users]
    assert arms == [r.arm(u) for u in users]  # the same user always gets the same version
    share = arms.count("challenger") / len(arms)
    assert 0.09 < share < 0.11
    other = rollout(canary=10)  # a new rollout id: a different 10% of the users
    overlap = sum(a == "challenger" and other.arm(u) == "challenger" for a, u in zip(arms, users, strict=True))
    assert overlap < 0.3 * arms.count("challenger")
    shadowed = sum(rollout(canary=0, shadow=25).shadowed(f"req{i}") for i in range(20_000)) / 20_000
    assert 0.23 < shadowed < 0.27
    ended = rollout(canary=100, state="rolled_back")
    assert ended.arm("user:1") == "champion" and not ended.shadowed("x")


# -------------------------------------------------------------------------------- registry
@pytest.fixture
def two_versions(registry, tmp_path):
    for v in (1, 2, 3):
        d = tmp_path / f"v{v}"
        d.mkdir()
        (d / "adapter_config.json").write_text(f'{{"v": {v}}}')
        registry.register("qa", d, kind="adapter")
    registry.set_alias("qa", "champion", 1, reason="first")
    registry.set_alias("qa", "challenger", 2, reason="trained")
    return RolloutStore(registry)


def test_start_keeps_the_rollout_in_the_registry_and_refuses_a_second_one(two_versions):
    store = two_versions
    r = start_rollout(store, "qa", canary=25, min_requests=50, max_minutes=5)
    again = store.get("qa")  # what a restarted gateway or another one reads
    assert (again.id, again.champion, again.challenger, again.canary, again.state) == (r.id, 1, 2, 25.0, "running")
    with pytest.raises(RolloutError, match="running already"):
        start_rollout(store, "qa", canary=10)
    with pytest.raises(RolloutError, match="not both 0"):
        start_rollout(store, "other", canary=0, shadow=0)


def test_start_needs_two_different_versions(two_versions):
    store = two_versions
    store.registry.set_alias("qa", "challenger", 1, reason="same")
    with pytest.raises(RolloutError, match="both version 1"):
        start_rollout(store, "qa")
    store.registry.delete_alias("qa", "challenger", reason="gone")
    with pytest.raises(RolloutError, match="challenger is not set"):
        start_rollout(store, "qa")


def test_an_automatic_promotion_moves_the_alias_with_the_figures_in_the_audit(two_versions):
    store = two_versions
    r = start_rollout(store, "qa", canary=50, min_requests=100)
    d = decide(r, {1: arm(1, 300, seed=1), 2: arm(2, 300, seed=2)}, CFG)
    assert d.action == "promote"
    apply_decision(store, r, d)
    reg = store.registry
    assert reg.alias_version("qa", "champion") == 2
    move = reg.last_move("qa", "champion")
    assert move.actor == "llmops-rollout" and r.id in move.reason and "latency_p50" in move.reason
    assert store.get("qa").state == "promoted"
    assert "promoted" in status_table(store.get("qa"), d)


def test_an_automatic_rollback_removes_the_challenger_alias_and_says_why(two_versions):
    store = two_versions
    r = start_rollout(store, "qa", canary=50)
    d = decide(r, {1: arm(1, 40), 2: arm(2, 40, degenerate=38)}, CFG)
    apply_decision(store, r, d)
    reg = store.registry
    assert reg.alias_version("qa", "challenger") is None and reg.alias_version("qa", "champion") == 1
    move = reg.last_move("qa", "challenger")
    assert move.from_version == 2 and move.to_version is None and "degenerate_rate" in move.reason
    ended = store.get("qa")
    assert ended.state == "rolled_back" and not ended.running


def test_manual_promote_rollback_and_stop(two_versions):
    store = two_versions
    reg = store.registry
    with pytest.raises(RolloutError, match="No rollout"):
        manual(store, "qa", "promote", "nothing runs")
    start_rollout(store, "qa")
    assert manual(store, "qa", "stop", "pause").state == "stopped"
    assert reg.alias_version("qa", "challenger") == 2  # stop moves no alias
    start_rollout(store, "qa")
    manual(store, "qa", "promote", "looks right")
    assert reg.alias_version("qa", "champion") == 2 and "by hand: looks right" in reg.last_move("qa", "champion").reason
    reg.set_alias("qa", "challenger", 3, reason="next")
    start_rollout(store, "qa")
    manual(store, "qa", "rollback", "users complain")
    assert reg.alias_version("qa", "challenger") is None and store.get("qa").state == "rolled_back"


# -------------------------------------------------------------------------------- request log
def test_figures_come_from_the_request_log_per_version(tmp_path):
    log = RequestLog(tmp_path / "log.sqlite")
    r = rollout(started=time.time() - 10)
    out = VerdictRecord("output", "redact", "pii")
    recs = [
        RequestRecord(id="a1", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="1",
                      latency_ms=100, completion_tokens=10, degenerate=0),
        RequestRecord(id="a2", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="1",
                      latency_ms=120, completion_tokens=20, degenerate=1, guardrails=[out]),
        RequestRecord(id="a3", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="1",
                      status=429),  # refused before the model: not counted
        RequestRecord(id="b1", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="2",
                      status=502, error_code="engine_error"),
        RequestRecord(id="b2", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="2",
                      latency_ms=300, ttft_ms=50, stream=True, degenerate=0, shadow=1, engine_status=200),
        RequestRecord(id="b3", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="2",
                      latency_ms=400, ttft_ms=70, stream=True, degenerate=0, engine_status=200),
        RequestRecord(id="b4", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="2",
                      status=404, error_code="model_not_found", engine_status=404),  # the engine lacks the adapter
        RequestRecord(id="b5", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="2",
                      status=400, error_code="content_blocked"),  # a prompt refused by the input rails
        RequestRecord(id="b6", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="2",
                      status=400, error_code="bad_request", engine_status=400),  # the client's bad parameters
        RequestRecord(id="b7", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="2",
                      status=502, error_code="engine_error", engine_status=400, shadow=1),  # the champion answered it
        RequestRecord(id="b8", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="2",
                      status=503, error_code="engine_unavailable"),  # no engine free: not the version's doing
        RequestRecord(id="b9", ts=time.time(), endpoint="chat", key_id="k", model="qa", registry_version="2",
                      status=504, error_code="engine_timeout"),  # the engine took it and did not answer in time
        RequestRecord(id="c1", ts=time.time(), endpoint="chat", key_id="k", model="other", registry_version="2",
                      latency_ms=1),  # another adapter's version 2
        RequestRecord(id="old", ts=time.time() - 100, endpoint="chat", key_id="k", model="qa", registry_version="2"),
    ]
    for rec in recs:
        log.write(rec)
    log.flush()
    assert log.add_feedback("a1", "k", 1.0, "good") == ("qa", "1")
    assert log.add_feedback("a1", "someone-else", 0.0, None) is None  # not their request
    assert log.add_feedback("b2", "k", 0.0, None) is None  # a shadow answer was never seen by anyone
    assert log.add_feedback("a2", "k", 0.5, None) is not None
    assert log.add_feedback("a2", "k", 0.0, "changed my mind") is not None  # replaces the first
    log.close()
    stats = version_stats(read_request_log(log.path), r, {"qa"}, read_feedback(log.path))
    one, two = stats[1], stats[2]
    assert (one.requests, one.answered, one.judged, one.degenerate, one.guarded) == (2, 2, 2, 1, 1)
    assert one.output_tokens == 15 and sorted(one.feedback) == [0.0, 1.0]
    # errors: the broken-off 502, the engine's 404, the engine's 400 to a shadow copy and the timeout; shadow
    # answers count for the rates, not the timings
    assert (two.requests, two.errors, two.shadow, two.answered, two.judged) == (6, 4, 2, 2, 2)
    assert (two.ttft_ms, two.latency_ms) == ([70.0], [400.0])
    until = version_stats(read_request_log(log.path), r, {"qa"}, until=time.time() - 5)
    assert until[1].requests == 0 and until[2].requests == 0  # an ended rollout's figures stop at its end
    row = one.row()
    assert row["degenerate_rate"] == 0.5 and row["guardrail_rate"] == 0.5 and row["feedback_n"] == 2


def test_margins_are_validated():
    with pytest.raises(ValueError):
        Margins(latency_ratio=0.5)  # a ratio margin below 1 would call a faster challenger worse


def test_decisions_wait_for_min_early_whatever_min_requests_says():
    """min_requests below min_early does not let a few unlucky errors roll a challenger back."""
    r = rollout(min_requests=1)
    few = {1: arm(1, 50), 2: arm(2, 3, errors=3)}  # 3 of 3 failed: "worse" on the figures alone
    assert any(c.verdict == "worse" for c in compare(few[1], few[2], CFG, CFG.alpha))
    assert decide(r, few, CFG).action == "continue"
    assert decide(r, {1: arm(1, 50), 2: arm(2, 30, degenerate=29)}, CFG).action == "rollback"


def test_a_tag_edited_into_nonsense_is_ignored_not_served(two_versions):
    store = two_versions
    start_rollout(store, "qa", canary=10)
    raw = store.registry.model_tag("qa", "llmops.rollout")
    store.registry.set_model_tag("qa", "llmops.rollout", raw.replace('"canary":10.0', '"canary":"ten"'))
    assert store.get("qa") is None  # logged; no request ever meets a TypeError from it
    store.registry.set_model_tag("qa", "llmops.rollout", "[1, 2]")
    assert store.get("qa") is None


def test_a_full_canary_is_refused(two_versions):
    with pytest.raises(RolloutError, match="below 100"):
        start_rollout(two_versions, "qa", canary=100)


def test_a_promotion_after_the_champion_moved_by_hand_is_not_made(two_versions):
    store = two_versions
    r = start_rollout(store, "qa", canary=50)
    store.registry.set_alias("qa", "champion", 3, reason="hotfix by hand")
    ended = apply_decision(store, r, decide(r, {1: arm(1, 300, seed=1), 2: arm(2, 300, seed=2)}, CFG))
    assert ended.state == "stopped" and "champion was moved" in ended.reason
    assert store.registry.alias_version("qa", "champion") == 3


def test_bootstrap_memory_stays_bounded_on_a_long_rollout():
    """Hundreds of thousands of latencies: subsampled and resampled in chunks (the poller must not eat the
    gateway's memory), and the interval still finds a 2x slowdown."""
    import tracemalloc

    from serving.rollout import bootstrap_interval

    rng = np.random.default_rng(0)
    fast, slow = rng.normal(100, 10, 300_000), rng.normal(200, 20, 30_000)
    tracemalloc.start()
    low, high = bootstrap_interval(list(slow), list(fast), lambda a, b: np.median(a, axis=1) / np.median(b, axis=1),
                                   0.05, 2000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 1.9 < low < high < 2.1
    assert peak < 200 * 2**20


def test_an_old_request_log_gains_the_new_columns_and_the_feedback_table(tmp_path):
    from testkit import first_release_request_log

    path = first_release_request_log(tmp_path / "old.sqlite", "('old', 1.0, 'chat', NULL, 'qa', '1', 200, NULL)")
    assert len(read_feedback(path)) == 0  # read-only readers cope with a log that has no feedback table
    df = read_request_log(path)
    assert df.loc[0, "shadow"] is None and df.loc[0, "engine_status"] is None
    log = RequestLog(path)  # the writer brings it up to date
    assert log.add_feedback("old", None, 1.0, None) == ("qa", "1")
    assert log.add_feedback("old", None, 0.0, "again") == ("qa", "1")  # a gateway without keys: still one score
    log.write(RequestRecord(id="new", ts=2.0, endpoint="chat", model="qa", registry_version="2", shadow=1,
                            engine_status=200))
    assert log.flush(5)
    log.close()
    assert list(read_feedback(path).score) == [0.0]
    df = read_request_log(path, columns=["model", "shadow"], models=["qa"])
    assert list(df.columns) == ["ts", "model", "shadow"] and list(df.shadow.fillna(0)) == [0, 1]


def test_flush_says_when_the_writer_is_not_running(tmp_path):
    log = RequestLog(tmp_path / "log.sqlite", start=False)
    log.write(RequestRecord(id="x", ts=1.0, endpoint="chat"))
    t0 = time.monotonic()
    assert log.flush(5) is False and time.monotonic() - t0 < 1  # a dead writer is not waited for
    log.start()
    assert log.flush(5) is True
    log.close()


def test_a_shadow_waits_while_the_engines_are_busy_with_users():
    """The runner's gate on the gateway's own in-flight count (GatewayState.busy): a queued shadow goes out only
    once user requests per ready replica fall to shadow_max_inflight."""
    import asyncio
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, Gauge

    from serving.gateway.rollouts import ShadowRunner
    from serving.gateway.state import GatewayState

    replicas = [SimpleNamespace(state="ready"), SimpleNamespace(state="ready"), SimpleNamespace(state="starting")]
    state = SimpleNamespace(inflight={"base": 5}, router=SimpleNamespace(groups={"base": replicas}),
                            metrics=SimpleNamespace(shadow_pending=Gauge("p", "p", registry=CollectorRegistry())))
    state.busy = lambda group, n: GatewayState.busy(state, group, n)
    assert state.busy("base", 2) and not state.busy("base", 3)  # 5 users on 2 ready replicas
    assert state.busy("other", 0) is False  # nothing in flight there

    sent = []

    async def scenario():
        runner = ShadowRunner(state, max_queue=4, concurrency=1, max_inflight=2)
        runner.IDLE_POLL_S = 0.01

        async def run(route, *rest):
            sent.append((route.group, state.inflight["base"]))

        runner._run = run
        runner.submit(SimpleNamespace(group="base", public="m", registry_version="2"), "/v1/chat/completions", {},
                      None, None, True)
        await asyncio.sleep(0.1)
        assert sent == []  # still busy: it waits in the queue
        state.inflight["base"] = 4
        await asyncio.sleep(0.1)
        assert sent == [("base", 4)]
        await runner.close()

    asyncio.run(scenario())


def test_a_rollout_whose_challenger_never_loads_still_expires(two_versions):
    """The gateway side (Rollouts.sync) on a real registry: while the engines are not ready the challenger is not
    loaded (and that is not counted against it); past max_minutes the rollout ends, so the next one can start."""
    from types import SimpleNamespace

    from serving.gateway.rollouts import Rollouts

    store = two_versions
    r = start_rollout(store, "qa", canary=10, max_minutes=1)
    adapter = SimpleNamespace(alias="champion", registry_name="qa", public_name="qa", base="base")
    state = SimpleNamespace(cfg=SimpleNamespace(rollout=CFG, adapters=[adapter], rollout_poll_s=10),
                            registry=store.registry,
                            router=SimpleNamespace(groups={"base": [SimpleNamespace(state="starting")]}))
    rollouts = Rollouts(state)
    rollouts.sync()
    assert store.get("qa").running and rollouts.active == {} and rollouts._load_failures == {}
    r.started -= 120  # two minutes later
    store.put(r)
    rollouts.sync()
    ended = store.get("qa")
    assert ended.state == "expired" and "not loaded" in ended.reason
    assert rollouts.decisions == [("qa", "expire", ended.reason)]
    assert store.registry.alias_version("qa", "champion") == 1  # no alias moved
    start_rollout(store, "qa", canary=10)  # the next one is not blocked


# -------------------------------------------------------------------------------- a first release
def first_release(registry, tmp_path, versions: int) -> RolloutStore:
    """Adapter versions 1..``versions`` of "first", no champion, the last one aliased challenger."""
    for v in range(1, versions + 1):
        d = tmp_path / f"first-v{v}"
        d.mkdir()
        (d / "adapter_config.json").write_text("{}")
        registry.register("first", d, kind="adapter")
    registry.set_alias("first", "challenger", versions, reason="trained")
    return RolloutStore(registry)


def test_a_first_release_is_compared_with_the_base_model_and_promoted_on_its_figures(registry, tmp_path):
    """No champion yet: the challenger adapter is compared with the base model it runs on, whose answers the
    request log names "base"; a promotion sets the first champion, audited."""
    from serving.rollout import BASE

    store = first_release(registry, tmp_path, versions=1)
    r = start_rollout(store, "first", canary=50, min_requests=20)
    assert (r.champion, r.challenger) == (BASE, 1) and store.get("first").champion == BASE
    log = RequestLog(tmp_path / "log.sqlite")
    for i in range(60):
        log.write(RequestRecord(id=f"r{i}", ts=time.time(), endpoint="chat", key_id="k", model="first",
                                registry_version="base" if i % 2 else "1", latency_ms=100 + i % 7,
                                completion_tokens=8, degenerate=0, engine_status=200))
    log.flush()
    log.close()
    stats = version_stats(read_request_log(log.path), r, {"first"})
    assert (stats[BASE].requests, stats[1].requests) == (30, 30)
    wide = Margins(error_rate=0.15, degenerate_rate=0.15, guardrail_rate=0.15)  # 30 requests a side
    d = decide(r, stats, RolloutConfig(margins=wide))
    assert d.action == "promote" and "no worse than the base model" in d.reason, d.reason
    assert "champion the base model" in status_table(r, d)
    ended = apply_decision(store, r, d)
    assert ended.state == "promoted" and registry.alias_version("first", "champion") == 1
    assert registry.last_move("first", "champion").actor == "llmops-rollout"


def test_a_first_release_is_stopped_when_a_champion_is_set_by_hand_meanwhile(registry, tmp_path):
    store = first_release(registry, tmp_path, versions=2)
    r = start_rollout(store, "first", canary=50)
    registry.set_alias("first", "champion", 1, reason="by hand")
    ended = apply_decision(store, r, decide(r, {0: arm(0, 300, seed=1), 2: arm(2, 300, seed=2)}, CFG))
    assert ended.state == "stopped" and "no longer the base model" in ended.reason
    assert registry.alias_version("first", "champion") == 1


def test_only_an_adapter_has_a_base_model_to_be_compared_with(registry, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    registry.register("whole", d, kind="base_model", aliases=["challenger"])
    with pytest.raises(RolloutError, match="whole@champion is not set"):
        start_rollout(RolloutStore(registry), "whole", canary=10)


def test_the_gateway_serves_a_first_release_with_the_base_model_until_it_ends(registry, tmp_path):
    """Rollouts.sync on a real registry: while the rollout runs, the public name (which had no champion) is answered
    by the base model for the champion's share and by the challenger for the canary's; once it ends unpromoted,
    the name is not served again."""
    from types import SimpleNamespace

    from serving.gateway.rollouts import Rollouts
    from serving.gateway.state import ModelRoute

    store = first_release(registry, tmp_path, versions=1)
    r = start_rollout(store, "first", canary=50)
    adapter = SimpleNamespace(alias="champion", registry_name="first", public_name="first", base="base")
    challenger = ModelRoute("first", "adapter", "base", "first--v1", 2048, "1")
    retired = []
    state = SimpleNamespace(
        cfg=SimpleNamespace(rollout=CFG, adapters=[adapter], rollout_poll_s=10, engines=[]), registry=registry,
        router=SimpleNamespace(groups={"base": [SimpleNamespace(state="ready")]}),
        models={"base": ModelRoute("base", "base", "base", "base", 2048)},
        load_version=lambda a, group, version, raise_errors=False: challenger, retire=retired.append)
    rollouts = Rollouts(state)
    rollouts.sync()
    base_arm = state.models["first"]
    assert (base_arm.upstream, base_arm.registry_version, base_arm.kind) == ("base", "base", "adapter")
    arms = {rollouts.pick(base_arm, f"user-{i}").registry_version for i in range(40)}
    assert arms == {"base", "1"}
    assert all(rollouts.pick(base_arm, f"user-{i}") is rollouts.pick(base_arm, f"user-{i}") for i in range(40))
    manual(store, "first", "stop", "paused")
    rollouts.sync()
    assert "first" not in state.models and retired == [challenger] and rollouts.active == {}
    assert state.models["base"].upstream == "base"  # the base model itself stays
    assert store.get("first").id == r.id and store.get("first").state == "stopped"

    # promoted by someone else (the CLI, another gateway) between this poll's sync_adapters and sync: the name goes
    # straight to the new champion, never through a 404
    champion = ModelRoute("first", "adapter", "base", "first--v1", 2048, "1")
    state.sync_adapters = lambda: state.models.__setitem__("first", champion) if registry.alias_version(
        "first", "champion") == 1 else None
    start_rollout(store, "first", canary=50)
    rollouts.sync()
    assert state.models["first"].registry_version == "base"
    manual(store, "first", "promote", "looks right")
    rollouts.sync()
    assert state.models["first"] is champion and rollouts.active == {}


def test_a_first_release_stops_when_a_champion_is_set_by_hand_while_it_runs(registry, tmp_path):
    """The deciding gateway sees the champion's share answered by that version now, not the base model: the
    comparison no longer holds, so it ends the rollout instead of running blind until it expires."""
    from types import SimpleNamespace

    from serving.gateway.rollouts import Rollouts
    from serving.gateway.state import ModelRoute

    store = first_release(registry, tmp_path, versions=2)
    start_rollout(store, "first", canary=50)
    adapter = SimpleNamespace(alias="champion", registry_name="first", public_name="first", base="base")
    challenger = ModelRoute("first", "adapter", "base", "first--v2", 2048, "2")
    state = SimpleNamespace(
        cfg=SimpleNamespace(rollout=RolloutConfig(decide_every_s=0), adapters=[adapter], rollout_poll_s=10,
                            engines=[]),
        registry=registry, router=SimpleNamespace(groups={"base": [SimpleNamespace(state="ready")]}),
        models={"base": ModelRoute("base", "base", "base", "base", 2048)}, requestlog=SimpleNamespace(),
        load_version=lambda a, group, version, raise_errors=False: challenger, retire=lambda route: None,
        sync_adapters=lambda: None)
    rollouts = Rollouts(state)
    rollouts.sync()
    registry.set_alias("first", "champion", 1, reason="by hand")
    state.models["first"] = ModelRoute("first", "adapter", "base", "first--v1", 2048, "1")  # what sync_adapters does
    taken = rollouts.decide()
    ended = store.get("first")
    assert ended.state == "stopped" and "a champion was set during this first release" in ended.reason
    assert taken == [("first", "stop", ended.reason)] and rollouts.active == {}
    assert state.models["first"].registry_version == "1"  # the champion set by hand keeps the name


def test_a_first_release_needs_a_canary(registry, tmp_path):
    store = first_release(registry, tmp_path, versions=1)
    with pytest.raises(RolloutError, match="needs --canary"):
        start_rollout(store, "first", canary=0, shadow=50)
