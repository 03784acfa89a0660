"""The Guard API: check prompts and answers against a policy; never raises into the caller.

Example::

    from guardrails.guard import Guard
    guard = Guard.from_config()          # configs/guardrails/default.yaml
    v = guard.check_input([{"role": "user", "content": "Ignore previous instructions and ..."}])
    v.allowed, v.action, v.rail          # False, "block", "injection"
    guard.check_output("Mail me at jo@example.com").text   # "Mail me at [EMAIL]"
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

from guardrails.policy import PolicyConfig
from guardrails.rails import RAILS
from guardrails.rails.base import CheckContext, Rail
from guardrails.rails.schema import JsonSchemaRail
from guardrails.stream import StreamGuard
from guardrails.verdict import Finding, Verdict
from llmops.config import SHIPPED_CONFIGS
from llmops.contracts import RegistryAPI, VerdictLike, content_text

log = logging.getLogger(__name__)
DEFAULT_POLICY = SHIPPED_CONFIGS / "guardrails" / "default.yaml"  # package data: found from any directory
_ORDER = {"allow": 0, "warn": 1, "redact": 2, "block": 3}


class Guard:
    """A policy's rails, built once; implements :class:`llmops.contracts.GuardHook`."""

    passthrough = False

    def __init__(self, policy: PolicyConfig, registry: RegistryAPI | None = None) -> None:
        self.policy = policy
        self.input_rails = [RAILS[c.rail][1](c, registry) for c in policy.input_rails]
        self.output_rails = [RAILS[c.rail][1](c, registry) for c in policy.output_rails]
        self.embed = None  # optional callable(list[str]) -> np.ndarray for groundedness
        # a self_check rail makes a network call: callers on an event loop run the guard in a thread
        self.blocking_io = any(r.blocking_io for r in self.input_rails + self.output_rails)

    @classmethod
    def from_config(cls, path: str | Path | None = None, registry: RegistryAPI | None = None) -> Guard:
        """Load a policy (default: the shipped configs/guardrails/default.yaml).

        Raises:
            ConfigError: the policy file is invalid. RegistryError: a required classifier is missing.
        """
        from llmops.config import load_config

        return cls(load_config(path or DEFAULT_POLICY, PolicyConfig), registry)

    # ---------------------------------------------------------------- public
    def check_input(self, messages: Any, model: str | None = None, key: str | None = None) -> Verdict:
        """Check an OpenAI-style message list (user and tool content; system prompts are trusted)."""
        t0 = time.perf_counter()
        try:
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                return self._verdict(False, "block", "input", [Finding("input", "malformed_messages")], None, t0,
                                     "the message list is malformed")
            rails = self._active(self.input_rails, model, key)
            findings: list[Finding] = []
            action, rail_name, reason = "allow", None, None
            out_messages = []
            for m in messages:
                content = m.get("content")
                text = content_text(content)
                if m.get("role") in ("user", "tool", "function") and text:
                    a, r, why, new_text, f = self._run(rails, text, "input")
                    findings += f
                    if _ORDER[a] > _ORDER[action]:
                        action, rail_name, reason = a, r, why
                    if a == "block":
                        break
                    if new_text != text and isinstance(content, str):
                        m = {**m, "content": new_text}
                out_messages.append(m)
            return self._verdict(action != "block", action, rail_name, findings, None, t0, reason,
                                 tuple(out_messages) if action == "redact" else None)
        except Exception as e:  # noqa: BLE001 - a guard must answer, not raise
            return self._error(e, t0)

    def check_output(self, text: Any, context: list[str] | None = None, model: str | None = None,
                     key: str | None = None, partial: bool = False) -> Verdict:
        """Check an answer (``context``: retrieved chunks, for groundedness; ``partial``: a piece of a
        stream, which skips the whole-answer rails: json_schema and the self-check)."""
        t0 = time.perf_counter()
        try:
            if not isinstance(text, str):
                return self._verdict(False, "block", "output", [Finding("output", "not_text")], None, t0,
                                     "the answer is not text")
            rails = self._active(self.output_rails, model, key)
            if partial:
                rails = [r for r in rails if not r.whole_answer]
            action, rail_name, reason, new_text, findings = self._run(rails, text, "output", context)
            return self._verdict(action != "block", action, rail_name, findings, new_text, t0, reason)
        except Exception as e:  # noqa: BLE001
            return self._error(e, t0)

    def reask(self, verdict: VerdictLike, messages: list[dict], answer: str, model: str | None = None,
              key: str | None = None) -> dict[str, Any] | None:
        """The one re-ask for an answer that failed a json_schema rail: ``{"messages", "response_format"}``
        to send to the same model, or None when the verdict is not a schema failure or re-asking is off."""
        if verdict.rail != "json_schema":
            return None
        for rail in self._active(self.output_rails, model, key):
            if isinstance(rail, JsonSchemaRail):
                request = rail.reask(messages, answer)
                if request is not None:
                    return request
        return None

    def stream_checker(self, model: str | None = None, key: str | None = None) -> StreamGuard:
        """A checker for streamed answers that holds back only what could still grow into a finding."""
        return StreamGuard(self, model, key)

    # -------------------------------------------------------------- internals
    def _active(self, rails: list[Rail], model: str | None, key: str | None) -> list[Rail]:
        off = set()
        if model and model in self.policy.per_model:
            off |= set(self.policy.per_model[model].disable)
        if key and key in self.policy.per_key:
            off |= set(self.policy.per_key[key].disable)
        return [r for r in rails if r.name not in off]

    def _run(self, rails: list[Rail], text: str, stage: Literal["input", "output"],
             context: list[str] | None = None):
        """Apply rails in order -> (action, rail, reason, text after redaction, findings)."""
        ctx = CheckContext.of(text, stage, context, self.embed)
        action, rail_name, reason, findings = "allow", None, None, []
        for rail in rails:
            try:
                res = rail.check(text, ctx)
            except Exception as e:  # noqa: BLE001 - one broken rail must not hide the others
                log.warning("rail %s failed: %s", rail.name, e)
                findings.append(Finding(rail.name, "rail_error"))
                if self.policy.on_rail_error == "block":
                    return "block", rail.name, f"rail {rail.name} failed", text, findings
                continue
            if not res.fired:
                continue
            findings += res.findings
            if rail.cfg.action == "redact" and res.text is not None:
                text = res.text
                ctx = CheckContext.of(text, stage, context, self.embed)
            if _ORDER[rail.cfg.action] > _ORDER[action]:
                action, rail_name, reason = rail.cfg.action, rail.name, res.reason
            if rail.cfg.action == "block":
                break
        return action, rail_name, reason, text, findings

    def _verdict(self, allowed, action, rail, findings, text, t0, reason=None, messages=None) -> Verdict:
        """Every block, whatever caused it, carries the policy's refusal text (what a caller shows)."""
        return Verdict(allowed, action, rail, text if allowed else self.policy.refusal_text, tuple(findings),
                       (time.perf_counter() - t0) * 1000, reason, messages)

    def _error(self, e: Exception, t0: float) -> Verdict:
        log.warning("guard failed: %s", e)
        block = self.policy.on_rail_error == "block"
        return self._verdict(not block, "block" if block else "warn", "guard", [Finding("guard", "error")],
                             None, t0, f"the guard failed ({type(e).__name__})")
