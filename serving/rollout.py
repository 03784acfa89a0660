"""Canary and shadow rollouts of a registry version, decided by statistics on live traffic.

A rollout puts ``name@challenger`` in front of a share of the traffic that ``name@champion`` serves
(canary: a sticky, weighted split; shadow: a sample of the champion's requests is also answered by the
challenger, recorded and never returned). The rollout itself lives in the registry, as a tag of the
registered model, so every gateway that follows the registry sees it, a restart keeps it, and the CLI
needs no gateway to start or stop one. Each gateway's request log holds the per-version figures; the
decision compares them with one-sided non-inferiority tests and moves the alias (promote) or takes the
challenger out of traffic (rollback), both audited with the figures::

    from serving.rollout import RolloutStore, start_rollout
    store = RolloutStore(registry)
    start_rollout(store, "smollm2-qa", canary=10, min_requests=200, max_minutes=60)
    # the gateways follow it; their pollers decide. By hand:
    table = version_stats(read_request_log(path, since=r.started), r)   # per-version figures
    decision = decide(r, table, RolloutConfig())                        # continue / promote / rollback / expire

A first release has no champion yet: the challenger is then compared with the base model its adapter runs on
(``champion`` 0, :data:`BASE`), which answers the other users under the public name while the rollout runs and
is logged as version ``base``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import Field

from llmops.config import StrictModel
from llmops.errors import LLMOpsError

log = logging.getLogger(__name__)

ROLLOUT_TAG = "llmops.rollout"
BASE = 0  # Rollout.champion of a first release: the base model answers the champion's share
BASE_LABEL = "base"  # how the request log, x-model-version and the metrics name that arm
RolloutState = Literal["running", "promoted", "rolled_back", "expired", "stopped"]


class RolloutError(LLMOpsError):
    """A rollout cannot start or change (the message says why and what to do)."""


class Margins(StrictModel):
    """How much worse the challenger may be and still count as no worse (non-inferiority margins)."""

    error_rate: float = Field(0.02, ge=0, le=1, description="Errors (5xx, the engine's 404, any engine error on a "
                              "shadow copy): absolute difference in rate.")
    degenerate_rate: float = Field(
        0.05, ge=0, le=1, description="Degenerate answers (loops, empty, wrong script): absolute difference.")
    guardrail_rate: float = Field(
        0.03, ge=0, le=1, description="Answers an output rail blocked, redacted or re-asked: absolute difference.")
    latency_ratio: float = Field(1.25, ge=1, description="p50 latency of the challenger / the champion's.")
    ttft_ratio: float = Field(1.25, ge=1, description="p50 time to first token (streams) / the champion's.")
    feedback: float = Field(0.1, ge=0, le=1, description="Mean feedback score (0-1): absolute drop.")


class RolloutConfig(StrictModel):
    """How rollouts are run by this gateway (``rollout:`` in the serving config)."""

    decide: bool = Field(
        True, description="This gateway decides running rollouts (promote / roll back) from its request log. With "
        "several gateways let one decide, or each decides on its own share of the traffic.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="One-sided significance level of each comparison once "
                         "min_requests is reached.")
    early_alpha: float = Field(
        0.001, gt=0, lt=0.5, description="Before min_requests a challenger is rolled back only when it is worse at "
        "this stricter level (early stop for harm; looking often must not roll back a good one by chance).")
    min_early: int = Field(20, ge=5, description="Challenger requests before the first early look.")
    min_feedback: int = Field(20, ge=1, description="Feedback scores per version before feedback is compared.")
    min_ttft: int = Field(20, ge=1, description="Streamed answers per version before TTFT is compared.")
    decide_every_s: float = Field(
        10, ge=0, description="Least time between two decisions (each reads the request log since the rollout "
        "started); the poller runs every rollout_poll_s.")
    margins: Margins = Field(default_factory=Margins, description="Non-inferiority margins.")
    bootstrap: int = Field(2000, ge=200, le=100_000, description="Bootstrap resamples for medians and means.")
    shadow_queue: int = Field(
        64, ge=1, description="Shadow requests waiting for the challenger; past it they are dropped and counted, "
        "so the shadow never holds the champion's traffic or memory.")
    shadow_concurrency: int = Field(1, ge=1, le=64, description="Shadow requests sent to the engine at once.")
    shadow_max_inflight: int | None = Field(
        4, ge=0, description="Shadow requests yield to users: one is sent only while at most this many user "
        "requests per ready replica are in flight on the challenger's engines (it waits in the queue meanwhile). "
        "None: always sent at once, which costs the users about the shadow share of the engine's capacity.")


@dataclass
class Rollout:
    """One rollout of ``name``: the challenger version against the champion version, as started."""

    name: str
    champion: int  # BASE (0): no champion yet, the base model answers the champion's share
    challenger: int
    canary: float  # percent of the traffic answered by the challenger (0: shadow only)
    shadow: float  # percent of the champion's requests also sent to the challenger, answers recorded only
    min_requests: int
    max_minutes: float
    started: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: RolloutState = "running"
    ended: float | None = None
    reason: str | None = None
    actor: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def champion_label(self) -> str:
        """"v3", or "the base model" for a first release."""
        return "the base model" if self.champion == BASE else f"v{self.champion}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Rollout:
        """Read a stored rollout; a tag edited into wrong types raises ValueError (never a request's 500)."""
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise ValueError("not an object")
        known = set(cls.__dataclass_fields__)
        r = cls(**{k: v for k, v in d.items() if k in known})
        r.champion, r.challenger, r.min_requests = int(r.champion), int(r.challenger), int(r.min_requests)
        r.canary, r.shadow, r.max_minutes, r.started = (float(r.canary), float(r.shadow), float(r.max_minutes),
                                                        float(r.started))
        r.ended = None if r.ended is None else float(r.ended)
        if not isinstance(r.id, str) or r.state not in ("running", "promoted", "rolled_back", "expired", "stopped"):
            raise ValueError(f"bad id or state {r.state!r}")
        return r

    def bucket(self, sticky: str) -> float:
        """Where ``sticky`` (a user or key) falls in [0, 100): the same user lands in the same arm for the whole
        rollout, and a new rollout shuffles users anew."""
        digest = hashlib.blake2b(f"{self.id}:{sticky}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 * 100

    def arm(self, sticky: str) -> Literal["champion", "challenger"]:
        return "challenger" if self.running and self.bucket(sticky) < self.canary else "champion"

    def shadowed(self, request_id: str) -> bool:
        """Whether a champion request is also sent to the challenger (a sample by request, not by user)."""
        if not self.running or self.shadow <= 0:
            return False
        digest = hashlib.blake2b(f"shadow:{self.id}:{request_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 * 100 < self.shadow


class RolloutStore:
    """Rollouts kept as a tag of the registered model (the newest one per model: running or how it ended)."""

    def __init__(self, registry) -> None:
        self.registry = registry

    def get(self, name: str) -> Rollout | None:
        raw = self.registry.model_tag(name, ROLLOUT_TAG)
        if not raw:
            return None
        try:
            return Rollout.from_json(raw)
        except (ValueError, TypeError) as e:
            log.warning("the rollout tag of %s is unreadable (%s); ignored", name, e)
            return None

    def put(self, rollout: Rollout) -> None:
        self.registry.set_model_tag(rollout.name, ROLLOUT_TAG, rollout.to_json())


def start_rollout(store: RolloutStore, name: str, *, canary: float = 10, shadow: float = 0, min_requests: int = 200,
                  max_minutes: float = 60, actor: str | None = None) -> Rollout:
    """Start a rollout of ``name@challenger`` against ``name@champion``; when an adapter has no champion yet (its
    first release), against the base model it runs on (``champion`` = :data:`BASE`).

    Raises:
        RolloutError: a rollout of ``name`` runs already, the challenger is not set (or the champion, for a
            version that is no adapter), or both aliases name the same version.
    """
    if not (0 <= canary < 100 and 0 <= shadow <= 100) or canary + shadow <= 0:
        raise RolloutError("Give --canary (percent of the users for the challenger, below 100: the champion's users "
                           "are what it is compared with) and/or --shadow (percent of the champion's requests "
                           "mirrored, up to 100), not both 0.")
    if min_requests < 1 or max_minutes <= 0:
        raise RolloutError("min_requests must be at least 1 and max_minutes above 0.")
    current = store.get(name)
    if current is not None and current.running:
        raise RolloutError(f"A rollout of {name} is running already (v{current.challenger} against "
                           f"{current.champion_label}, started {_ago(current.started)}); `llmops rollout stop {name}` "
                           "first.")
    reg = store.registry
    champion, challenger = reg.alias_version(name, "champion"), reg.alias_version(name, "challenger")
    if champion is None and challenger is not None and reg.get_version(name, challenger).kind == "adapter":
        if canary <= 0:
            raise RolloutError(f"{name} has no champion yet, so nobody uses {name} and there is no traffic to mirror: "
                               "a first release needs --canary (the base model answers the other users meanwhile).")
        champion = BASE  # a first release: the users of the public name get the base model today
    if champion is None or challenger is None:
        missing = " and ".join(a for a, v in (("champion", champion), ("challenger", challenger)) if v is None)
        raise RolloutError(f"{name}@{missing} is not set: a rollout compares the challenger with the champion. Set "
                           f"it with `llmops registry alias {name} <alias> <version> --reason ...`.")
    if champion == challenger:
        raise RolloutError(f"{name}@champion and @challenger are both version {champion}: nothing to roll out.")
    rollout = Rollout(name, champion, challenger, float(canary), float(shadow), int(min_requests),
                      float(max_minutes), time.time(), actor=actor)
    store.put(rollout)
    log.info("rollout %s started: v%d at %g%% (shadow %g%%) against %s", name, challenger, canary, shadow,
             rollout.champion_label)
    return rollout


def end_rollout(store: RolloutStore, rollout: Rollout, state: RolloutState, reason: str) -> Rollout:
    """Record how the rollout ended (the alias moves are the caller's: :func:`apply_decision`)."""
    rollout.state, rollout.ended, rollout.reason = state, time.time(), reason
    store.put(rollout)
    return rollout


# ------------------------------------------------------------------------------------------ figures
@dataclass
class VersionStats:
    """One version's figures over a rollout's traffic (answers returned to users and shadow answers)."""

    version: int
    requests: int = 0  # requests that reached the model (client errors before it, 401/429/blocked prompts, left out)
    shadow: int = 0
    errors: int = 0
    judged: int = 0  # answers judged for degenerate output
    degenerate: int = 0
    answered: int = 0  # status 200
    guarded: int = 0  # answers an output rail blocked, redacted or re-asked
    output_tokens: float | None = None  # mean
    latency_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    feedback: list[float] = field(default_factory=list)

    def p(self, values: list[float], q: float) -> float | None:
        import numpy as np

        return float(np.percentile(values, q)) if values else None

    def row(self) -> dict[str, Any]:
        """The figures as the status table shows them."""
        rate = lambda k, n: round(k / n, 4) if n else None  # noqa: E731
        return {"version": BASE_LABEL if self.version == BASE else self.version, "requests": self.requests,
                "shadow": self.shadow,
                "error_rate": rate(self.errors, self.requests), "degenerate_rate": rate(self.degenerate, self.judged),
                "guardrail_rate": rate(self.guarded, self.answered),
                "latency_p50_ms": _r(self.p(self.latency_ms, 50)), "latency_p95_ms": _r(self.p(self.latency_ms, 95)),
                "ttft_p50_ms": _r(self.p(self.ttft_ms, 50)), "ttft_p95_ms": _r(self.p(self.ttft_ms, 95)),
                "output_tokens": _r(self.output_tokens), "feedback": _r(_mean(self.feedback), 3),
                "feedback_n": len(self.feedback)}


ENGINE_FAULTS = ("engine_error", "engine_timeout")  # the engine took the request and broke off / did not answer


def version_stats(requests, rollout: Rollout, models: set[str], feedback=None,
                  until: float | None = None) -> dict[int, VersionStats]:
    """Figures per version (champion and challenger of ``rollout``) from the request log's rows (a DataFrame
    of :func:`llmops.contracts.read_request_log`) since the rollout started, and feedback rows
    (:func:`llmops.contracts.read_feedback`). ``models``: the public model ids that serve ``rollout.name`` (the
    log names the public model; another adapter's version 2 is not this one's). ``until``: rows before this time
    only (an ended rollout's figures stop at its end).

    A request counts when an engine answered it (``engine_status``) or took it and broke off or timed out;
    requests refused or failed before (401, 429, a blocked prompt, a context overflow, no engine free) count for
    neither version. An error is a 5xx, the engine's 404 (a challenger the engine does not have) or, for a shadow
    copy of a request the champion answered, any engine 4xx; the engine's other 4xx to a user's request are the
    client's parameters and count for neither. Shadow answers count for the rates, not for latency and TTFT
    (they are timed without streaming, rails or queueing)."""
    out = {v: VersionStats(v) for v in (rollout.champion, rollout.challenger)}
    if requests is not None and len(requests):
        df = requests[requests["ts"] >= rollout.started]
        if until is not None:
            df = df[df["ts"] < until]
        tokens: dict[int, list[float]] = {v: [] for v in out}
        for row in df.itertuples(index=False):
            version = _version(row.registry_version)
            if version not in out or row.model not in models:
                continue
            s, status = out[version], int(row.status)
            engine = getattr(row, "engine_status", None)
            engine = None if engine is None or _nan(engine) else int(engine)
            shadow = getattr(row, "shadow", None) == 1
            if engine is None and status != 200 and getattr(row, "error_code", None) not in ENGINE_FAULTS:
                continue  # refused or failed in the gateway before an engine had it: not the version's doing
            if engine is not None and 400 <= engine < 500 and engine != 404 and not shadow:
                continue  # the engine refused the client's request (bad parameters): the client's doing
            s.requests += 1
            s.shadow += int(shadow)
            if status >= 500 or (engine is not None and engine >= 400):
                s.errors += 1
                continue
            if status != 200:
                continue
            s.answered += 1
            if row.degenerate is not None and not _nan(row.degenerate):
                s.judged += 1
                s.degenerate += int(row.degenerate)
            if any(v.stage == "output" and v.action in ("block", "redact", "reask") for v in row.guardrails):
                s.guarded += 1
            if not shadow and row.latency_ms is not None and not _nan(row.latency_ms):
                s.latency_ms.append(float(row.latency_ms))
            if not shadow and row.ttft_ms is not None and not _nan(row.ttft_ms):
                s.ttft_ms.append(float(row.ttft_ms))
            if row.completion_tokens is not None and not _nan(row.completion_tokens):
                tokens[version].append(float(row.completion_tokens))
        for v, values in tokens.items():
            out[v].output_tokens = _mean(values)
    if feedback is not None and len(feedback):
        for row in feedback.itertuples(index=False):
            version = _version(row.registry_version)
            if version in out and row.model in models:
                out[version].feedback.append(float(row.score))
    return out


# --------------------------------------------------------------------------------------- decision
@dataclass
class Comparison:
    """Challenger against champion on one figure: the one-sided interval of "how much worse" and the verdict."""

    metric: str
    champion: float | None
    challenger: float | None
    worse_low: float | None  # lower bound of (challenger worse by); above the margin: inferior
    worse_high: float | None  # upper bound; below the margin: non-inferior
    margin: float
    verdict: Literal["no worse", "worse", "inconclusive", "n/a"]

    def text(self) -> str:
        if self.verdict == "n/a":
            return f"{self.metric}: n/a"
        return (f"{self.metric} {_fmt(self.challenger)} vs {_fmt(self.champion)} (worse by "
                f"[{_fmt(self.worse_low)}, {_fmt(self.worse_high)}], margin {_fmt(self.margin)}): {self.verdict}")


@dataclass
class Decision:
    action: Literal["continue", "promote", "rollback", "expire", "stop"]
    reason: str
    comparisons: list[Comparison]
    champion: VersionStats
    challenger: VersionStats


def _z(alpha: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha)


def rate_interval(k1: int, n1: int, k0: int, n0: int, alpha: float) -> tuple[float, float]:
    """One-sided (1 - alpha) bounds of p1 - p0 (challenger minus champion), Agresti-Caffo: one success and one
    failure added to each arm, which keeps the interval honest at 0 or 100% and small counts."""
    p1, p0 = (k1 + 1) / (n1 + 2), (k0 + 1) / (n0 + 2)
    se = math.sqrt(p1 * (1 - p1) / (n1 + 2) + p0 * (1 - p0) / (n0 + 2))
    d, z = p1 - p0, _z(alpha)
    return d - z * se, d + z * se


BOOTSTRAP_MAX_SAMPLES = 5000  # per version: a random subsample beyond it (the interval barely narrows further)
BOOTSTRAP_CHUNK_CELLS = 2_000_000  # resampled values held at once (~16 MB of float64), whatever the traffic


def bootstrap_interval(challenger: list[float], champion: list[float], stat, alpha: float, resamples: int,
                       seed: int = 0) -> tuple[float, float]:
    """One-sided (1 - alpha) percentile-bootstrap bounds of ``stat(challenger, champion)``. Memory stays bounded
    however long the rollout ran: each version is subsampled to BOOTSTRAP_MAX_SAMPLES and the resamples are drawn
    in chunks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)
    if len(a) > BOOTSTRAP_MAX_SAMPLES:
        a = rng.choice(a, BOOTSTRAP_MAX_SAMPLES, replace=False)
    if len(b) > BOOTSTRAP_MAX_SAMPLES:
        b = rng.choice(b, BOOTSTRAP_MAX_SAMPLES, replace=False)
    chunk = max(1, BOOTSTRAP_CHUNK_CELLS // (len(a) + len(b)))
    values = []
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        values.append(stat(a[rng.integers(0, len(a), size=(k, len(a)))], b[rng.integers(0, len(b), size=(k, len(b)))]))
    values = np.concatenate(values)
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def compare(champ: VersionStats, chall: VersionStats, cfg: RolloutConfig, alpha: float) -> list[Comparison]:
    """Every figure the decision uses, challenger against champion, at one-sided level ``alpha``."""
    import numpy as np

    m = cfg.margins
    out = []
    for metric, k1, n1, k0, n0, margin in (
            ("error_rate", chall.errors, chall.requests, champ.errors, champ.requests, m.error_rate),
            ("degenerate_rate", chall.degenerate, chall.judged, champ.degenerate, champ.judged, m.degenerate_rate),
            ("guardrail_rate", chall.guarded, chall.answered, champ.guarded, champ.answered, m.guardrail_rate)):
        if not n1 or not n0:
            out.append(Comparison(metric, None, None, None, None, margin, "n/a"))
            continue
        low, high = rate_interval(k1, n1, k0, n0, alpha)
        out.append(Comparison(metric, k0 / n0, k1 / n1, low, high, margin, _verdict(low, high, margin)))

    def median_ratio(a, b):
        return np.median(a, axis=1) / np.maximum(np.median(b, axis=1), 1e-9)

    for metric, a, b, margin, least in (("latency_p50", chall.latency_ms, champ.latency_ms, m.latency_ratio, 2),
                                        ("ttft_p50", chall.ttft_ms, champ.ttft_ms, m.ttft_ratio, cfg.min_ttft)):
        if len(a) < least or len(b) < least:
            out.append(Comparison(metric, None, None, None, None, margin, "n/a"))
            continue
        low, high = bootstrap_interval(a, b, median_ratio, alpha, cfg.bootstrap)
        out.append(Comparison(metric, float(np.median(b)), float(np.median(a)), low, high, margin,
                              _verdict(low, high, margin)))
    a, b = chall.feedback, champ.feedback
    if len(a) < cfg.min_feedback or len(b) < cfg.min_feedback:
        out.append(Comparison("feedback", _mean(b), _mean(a), None, None, m.feedback, "n/a"))
    else:  # lower scores are worse: "worse by" is the champion's mean minus the challenger's
        low, high = bootstrap_interval(a, b, lambda x, y: y.mean(axis=1) - x.mean(axis=1), alpha, cfg.bootstrap)
        out.append(Comparison("feedback", _mean(b), _mean(a), low, high, m.feedback, _verdict(low, high, m.feedback)))
    return out


def _verdict(low: float, high: float, margin: float) -> Literal["no worse", "worse", "inconclusive"]:
    if low > margin:
        return "worse"
    if high < margin:
        return "no worse"
    return "inconclusive"


def decide(rollout: Rollout, stats: dict[int, VersionStats], cfg: RolloutConfig, now: float | None = None) -> Decision:
    """What to do with a running rollout now.

    - Nothing is decided before ``min_early`` challenger requests (whatever ``min_requests`` says).
    - Before ``min_requests`` challenger requests: roll back only when a figure is worse beyond its margin at
      ``early_alpha``; otherwise continue.
    - From ``min_requests`` on: roll back when a figure is worse beyond its margin at ``alpha``; promote when
      every figure that can be measured is no worse (within its margin) at ``alpha``; otherwise continue. A
      shadow-only rollout (canary 0) is rolled back the same way but never promoted by itself: it says so and
      runs on until stopped, promoted by hand or expired.
    - Past ``max_minutes`` without a decision: expire (the challenger leaves the traffic, no alias moves).
    """
    now = time.time() if now is None else now
    champ, chall = stats[rollout.champion], stats[rollout.challenger]
    early = chall.requests < rollout.min_requests
    alpha = cfg.early_alpha if early else cfg.alpha
    comparisons = compare(champ, chall, cfg, alpha)
    worse = [c for c in comparisons if c.verdict == "worse"]
    figures = "; ".join(c.text() for c in comparisons if c.verdict != "n/a")
    counts = (f"challenger v{rollout.challenger} {chall.requests} requests, champion {rollout.champion_label} "
              f"{champ.requests}")
    if worse and chall.requests >= cfg.min_early:
        level = f"one-sided alpha {alpha:g}" + (" (early look)" if early else "")
        return Decision("rollback", f"rollout {rollout.id}: v{rollout.challenger} is worse than "
                        f"{rollout.champion_label} ({level}; {counts}): {'; '.join(c.text() for c in worse)}",
                        comparisons, champ, chall)
    measured = [c for c in comparisons if c.verdict != "n/a"]
    passed = not early and chall.requests >= cfg.min_early and champ.requests >= cfg.min_early and measured and \
        all(c.verdict == "no worse" for c in measured)
    if passed and rollout.canary == 0 and now - rollout.started <= rollout.max_minutes * 60:
        return Decision("continue", f"{counts}; shadow only: no figure is worse ({figures}). A shadow rollout is "
                        "not promoted by itself (no user saw the challenger; its latency is not measured on user "
                        f"traffic): `llmops rollout promote {rollout.name}` or a canary", comparisons, champ, chall)
    if passed and rollout.canary > 0:
        return Decision("promote", f"rollout {rollout.id}: v{rollout.challenger} is no worse than "
                        f"{rollout.champion_label} within the margins (one-sided alpha {alpha:g}; {counts}): {figures}",
                        comparisons, champ, chall)
    if now - rollout.started > rollout.max_minutes * 60:
        why = ("not enough traffic" if early else "shadow only, no figure worse: promote by hand or run a canary"
               if passed else "no figure showed it worse, not every one no worse")
        return Decision("expire", f"rollout {rollout.id}: no decision within {rollout.max_minutes:g} min ({why}; "
                        f"{counts}){': ' + figures if figures else ''}", comparisons, champ, chall)
    wait = f" for {rollout.min_requests} challenger requests" if early else " for the figures to settle"
    return Decision("continue", f"{counts}; waiting{wait}", comparisons, champ, chall)


def apply_decision(store: RolloutStore, rollout: Rollout, decision: Decision) -> Rollout:
    """Carry out a decision: promote moves ``champion`` to the challenger; rollback removes the ``challenger`` alias
    (if it still names the rolled-out version); expire moves no alias. Each ends the rollout with the reason."""
    reg = store.registry
    actor = "llmops-rollout"
    current = store.get(rollout.name)
    if current is None or current.id != rollout.id or not current.running:
        return current or rollout  # ended meanwhile (by hand, or by another gateway): nothing to do
    if decision.action == "promote":
        if (reg.alias_version(rollout.name, "champion") or BASE) != rollout.champion:
            return end_rollout(store, rollout, "stopped", f"rollout {rollout.id}: champion was moved during the "
                               f"rollout (no longer {rollout.champion_label}); not promoted. Figures: "
                               f"{decision.reason}")
        reg.set_alias(rollout.name, "champion", rollout.challenger, reason=decision.reason, actor=actor)
        return end_rollout(store, rollout, "promoted", decision.reason)
    if decision.action == "rollback":
        if reg.alias_version(rollout.name, "challenger") == rollout.challenger:
            reg.delete_alias(rollout.name, "challenger", reason=decision.reason, actor=actor)
        return end_rollout(store, rollout, "rolled_back", decision.reason)
    if decision.action == "expire":
        return end_rollout(store, rollout, "expired", decision.reason)
    return rollout


def manual(store: RolloutStore, name: str, action: Literal["promote", "rollback", "stop"], reason: str,
           actor: str | None = None) -> Rollout:
    """Promote, roll back or stop the running rollout of ``name`` by hand (audited like the automatic ones).

    Raises:
        RolloutError: no rollout of ``name`` is running.
    """
    rollout = store.get(name)
    if rollout is None or not rollout.running:
        raise RolloutError(f"No rollout of {name} is running (`llmops rollout status {name}`).")
    reg = store.registry
    text = f"rollout {rollout.id}: {action} by hand: {reason}"
    if action == "promote":
        reg.set_alias(name, "champion", rollout.challenger, reason=text, actor=actor)
        return end_rollout(store, rollout, "promoted", text)
    if action == "rollback":
        if reg.alias_version(name, "challenger") == rollout.challenger:
            reg.delete_alias(name, "challenger", reason=text, actor=actor)
        return end_rollout(store, rollout, "rolled_back", text)
    return end_rollout(store, rollout, "stopped", text)


def status_table(rollout: Rollout, decision: Decision) -> str:
    """The status as a person reads it: the rollout, one row per version, then each comparison."""
    lines = [f"rollout {rollout.id} of {rollout.name}: {rollout.state}; challenger v{rollout.challenger} at "
             f"{rollout.canary:g}% canary, {rollout.shadow:g}% shadow; champion {rollout.champion_label}; started "
             f"{_ago(rollout.started)}; min {rollout.min_requests} requests, max {rollout.max_minutes:g} min"]
    cols = ["version", "requests", "shadow", "error_rate", "degenerate_rate", "guardrail_rate", "latency_p50_ms",
            "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms", "output_tokens", "feedback", "feedback_n"]
    rows = [["champion", *(_fmt(decision.champion.row()[c]) for c in cols)],
            ["challenger", *(_fmt(decision.challenger.row()[c]) for c in cols)]]
    header = ["", *cols]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for r in (header, *rows):
        lines.append("  ".join(str(x).rjust(w) for x, w in zip(r, widths, strict=True)))
    lines.append("comparisons (challenger against champion, one-sided intervals of how much worse):")
    lines.extend(f"  {c.text()}" for c in decision.comparisons)
    if rollout.running:
        lines.append(f"decision now: {decision.action}: {decision.reason}")
    else:
        lines.append(f"ended {_ago(rollout.ended or rollout.started)}: {rollout.reason}")
    return "\n".join(lines)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _version(v: Any) -> int | None:
    """A request log's registry_version as a rollout counts it: the base model's arm is :data:`BASE`."""
    return BASE if v == BASE_LABEL else _int(v)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _r(v: float | None, digits: int = 1) -> float | None:
    return None if v is None else round(v, digits)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _ago(ts: float) -> str:
    s = max(0, time.time() - ts)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago"
