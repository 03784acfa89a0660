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
from typing import Any

from guardrails.policy import PolicyConfig, RailConfig
from guardrails.rails import grounded, injection, pii, presidio, schema, selfcheck, topics, toxicity
from guardrails.stream import StreamGuard
from guardrails.verdict import Finding, Verdict
from llmops.textnorm import normalize, variants

log = logging.getLogger(__name__)
DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "configs" / "guardrails" / "default.yaml"
_ORDER = {"allow": 0, "warn": 1, "redact": 2, "block": 3}


class Guard:
    def __init__(self, policy: PolicyConfig, registry=None) -> None:
        self.policy = policy
        self._classifiers: dict[str, Any] = {}
        self._banned = {id(r): topics.compile_banned(r.banned) for r in policy.input_rails + policy.output_rails}
        self._toxic_extra = {id(r): topics.compile_banned(r.extra_terms) for r in policy.output_rails}
        self.embed = None  # optional callable(list[str]) -> np.ndarray for groundedness
        # a self_check rail makes a network call: callers on an event loop run the guard in a thread
        self.blocking_io = any(r.rail == "self_check" for r in policy.input_rails + policy.output_rails)
        for rail in policy.input_rails:
            if rail.rail == "injection" and rail.classifier:
                self._classifiers[rail.classifier] = self._load_classifier(rail, registry)

    @classmethod
    def from_config(cls, path: str | Path | None = None, registry=None) -> Guard:
        """Load a policy (default: configs/guardrails/default.yaml).

        Raises:
            ConfigError: the policy file is invalid. RegistryError: a required classifier is missing.
        """
        from llmops.config import load_config

        return cls(load_config(path or DEFAULT_POLICY, PolicyConfig), registry)

    def _load_classifier(self, rail: RailConfig, registry) -> Any:
        try:
            from llmops.registry import Registry, load_sklearn_model

            registry = registry or Registry()
            model, _ = load_sklearn_model(registry.resolve(rail.classifier).local_path)
            return _fast_scorer(model)
        except Exception as e:
            if rail.classifier_required:
                raise
            log.warning("injection classifier %s unavailable (%s); using rules only. Train it with "
                        "`llmops classic train-text`.", rail.classifier, e)
            return None

    # ---------------------------------------------------------------- public
    def check_input(self, messages: Any, model: str | None = None, key: str | None = None) -> Verdict:
        """Check an OpenAI-style message list (user and tool content; system prompts are trusted)."""
        t0 = time.perf_counter()
        try:
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                return self._verdict(False, "block", "input", [Finding("input", "malformed_messages")], None, t0,
                                     "the message list is malformed")
            rails = self._active(self.policy.input_rails, model, key)
            findings: list[Finding] = []
            action, rail_name, reason = "allow", None, None
            out_messages = []
            for m in messages:
                content = m.get("content")
                text = _text(content)
                if m.get("role") in ("user", "tool", "function") and text:
                    a, r, why, new_text, f = self._run(rails, text, None, "input")
                    findings += f
                    if _ORDER[a] > _ORDER[action]:
                        action, rail_name, reason = a, r, why
                    if a == "block":
                        break
                    if new_text != text and isinstance(content, str):
                        m = {**m, "content": new_text}
                out_messages.append(m)
            allowed = action != "block"
            return self._verdict(allowed, action, rail_name, findings, None, t0, reason,
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
            rails = self._active(self.policy.output_rails, model, key)
            if partial:
                rails = [r for r in rails if r.rail not in ("json_schema", "self_check")]
            action, rail_name, reason, new_text, findings = self._run(rails, text, context, "output")
            shown = self.policy.refusal_text if action == "block" else new_text
            return self._verdict(action != "block", action, rail_name, findings, shown, t0, reason)
        except Exception as e:  # noqa: BLE001
            return self._error(e, t0)

    def reask(self, verdict: Verdict, messages: list[dict], answer: str, model: str | None = None,
              key: str | None = None) -> dict[str, Any] | None:
        """The one re-ask for an answer that failed a json_schema rail: ``{"messages", "response_format"}``
        to send to the same model, or None when the verdict is not a schema failure or re-asking is off."""
        if verdict.rail != "json_schema":
            return None
        for rail in self._active(self.policy.output_rails, model, key):
            if rail.rail == "json_schema" and rail.reask:
                error = schema.schema_error(answer, rail.schema_)
                if error:
                    return schema.reask_request(messages, answer, error, rail.schema_)
        return None

    def stream_checker(self, model: str | None = None, key: str | None = None) -> StreamGuard:
        """A checker for streamed answers that holds back only what could still grow into a finding."""
        return StreamGuard(self, model, key)

    # -------------------------------------------------------------- internals
    def _active(self, rails: list[RailConfig], model: str | None, key: str | None) -> list[RailConfig]:
        off = set()
        if model and model in self.policy.per_model:
            off |= set(self.policy.per_model[model].disable)
        if key and key in self.policy.per_key:
            off |= set(self.policy.per_key[key].disable)
        return [r for r in rails if r.rail not in off]

    def _run(self, rails: list[RailConfig], text: str, context: list[str] | None, stage: str):
        """Apply rails in order -> (action, rail, reason, text after redaction, findings)."""
        forms = variants(text)
        action, rail_name, reason, findings = "allow", None, None, []
        for rail in rails:
            try:
                hit, label_list, new_text, why = self._apply(rail, text, forms, context, stage)
            except Exception as e:  # noqa: BLE001 - one broken rail must not hide the others
                log.warning("rail %s failed: %s", rail.rail, e)
                findings.append(Finding(rail.rail, "rail_error"))
                if self.policy.on_rail_error == "block":
                    return "block", rail.rail, f"rail {rail.rail} failed", text, findings
                continue
            if not hit:
                continue
            findings += label_list
            if rail.action == "redact" and new_text is not None:
                text, forms = new_text, variants(new_text)
            if _ORDER[rail.action] > _ORDER[action]:
                action, rail_name, reason = rail.action, rail.rail, why
            if rail.action == "block":
                break
        return action, rail_name, reason, text, findings

    def _apply(self, rail: RailConfig, text: str, forms: list[str], context: list[str] | None, stage: str):
        """-> (fired, findings, redacted text or None, reason)."""
        name = rail.rail
        if name == "length":
            n = len(text)
            return (n > rail.max_chars, [Finding(name, "too_long", None, float(n))], None,
                    f"{n} characters, more than {rail.max_chars}")
        if name == "pii":
            wanted = set(rail.entities) if rail.entities else None
            matches = self._pii(text, wanted, rail)
            # obfuscated PII (zero-width characters, fullwidth digits) shows in the normalised form
            if not matches and forms[0] != text:
                hidden = self._pii(forms[0], wanted, rail)
                if hidden:
                    fs = [Finding(name, m.entity, None, m.score) for m in hidden]
                    return True, fs, pii.redact(forms[0], hidden), "personal data or a secret"
            fs = [Finding(name, m.entity, (m.start, m.end), m.score) for m in matches]
            return bool(matches), fs, pii.redact(text, matches), "personal data or a secret"
        if name == "injection":
            hits = injection.rule_hits(forms)
            fs = [Finding(name, f"rule:{family}", span, 1.0) for family, span in hits]
            clf = self._classifiers.get(rail.classifier) if rail.classifier else None
            if clf is not None and len(forms[0].split()) >= rail.classifier_min_words:
                # head and tail of long prompts: where injections sit, and it bounds the cost
                probe = forms[0] if len(forms[0]) <= 800 else forms[0][:400] + " " + forms[0][-400:]
                p = clf(probe)
                if p >= (rail.threshold if rail.threshold is not None else 0.5):
                    fs.append(Finding(name, "classifier", None, round(p, 4)))
            return bool(fs), fs, None, "prompt injection or jailbreak attempt"
        if name == "topics":
            hits = topics.banned_hits(self._banned[id(rail)], forms)
            return bool(hits), [Finding(name, f"banned:{h}") for h in hits], None, f"banned topic ({', '.join(hits)})"
        if name == "toxicity":
            hits = toxicity.toxic_hits([forms[0], normalize(text).lower()], self._toxic_extra.get(id(rail)))
            return bool(hits), [Finding(name, "toxic") for _ in hits[:1]], None, "toxic language"
        if name == "json_schema":
            error = schema.schema_error(text, rail.schema_)
            return (error is not None, [Finding(name, "invalid_json")], None,
                    f"answer does not match the schema: {error}")
        if name == "self_check":
            j = rail.judge
            res = selfcheck.self_check(forms[0] if stage == "input" else text, stage, base_url=j.base_url,
                                       model=j.model, api_key_env=j.api_key_env, timeout_s=j.timeout_s,
                                       max_chars=j.max_chars)
            return (bool(res["unsafe"]), [Finding(name, f"judge:{res['category']}", None, 1.0)], None,
                    f"the self-check model judged it unsafe ({res['category']}: {res['reason'][:120]})")
        if name == "groundedness":
            if context is None:
                return False, [], None, None
            score = grounded.groundedness(text, context, self.embed)
            thr = rail.threshold if rail.threshold is not None else 0.5
            return (score < thr, [Finding(name, "ungrounded", None, round(score, 3))], None,
                    f"only {score:.0%} of the answer is supported by the retrieved context")
        raise ValueError(f"unknown rail {name}")

    def _pii(self, text: str, wanted: set[str] | None, rail: RailConfig) -> list[pii.Match]:
        matches = pii.find(text, wanted)
        if rail.presidio == "required" or (rail.presidio == "auto" and presidio.installed()):
            more = presidio.find(text, wanted, rail.presidio_min_score)
            matches = pii.merge(matches, [pii.Match(e, a, b, s) for e, a, b, s in more])
        return matches

    def _verdict(self, allowed, action, rail, findings, text, t0, reason=None, messages=None) -> Verdict:
        return Verdict(allowed, action, rail, text, tuple(findings), (time.perf_counter() - t0) * 1000, reason,
                       messages)

    def _error(self, e: Exception, t0: float) -> Verdict:
        log.warning("guard failed: %s", e)
        block = self.policy.on_rail_error == "block"
        return self._verdict(not block, "block" if block else "warn", "guard", [Finding("guard", "error")],
                             None, t0, f"the guard failed ({type(e).__name__})")


def _fast_scorer(model: Any):
    """text -> probability. For the TF-IDF + logistic-regression pipeline of classic_ml.text this
    skips sklearn's per-call machinery (a few ms per call); anything else goes through predict_proba."""
    import numpy as np
    import pandas as pd
    from scipy.sparse import hstack

    try:
        union = model.named_steps["features"].transformers_[0][1]
        vectorizers = [v for _, v in union.transformer_list]
        lr = model.named_steps["model"]
        coef, bias = lr.coef_.ravel(), float(lr.intercept_[0])

        def score(text: str) -> float:
            x = hstack([v.transform([text]) for v in vectorizers]).tocsr()
            return float(1 / (1 + np.exp(-(x @ coef + bias)[0])))

        score("probe")  # fail here, not in a request, if the shape is not the expected one
        return score
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return lambda text: float(model.predict_proba(pd.DataFrame({"text": [text]}))[0, 1])


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
