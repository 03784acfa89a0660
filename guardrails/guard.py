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
from guardrails.rails.base import OPERATOR_ROLES, CheckContext, Rail
from guardrails.rails.content_safety import ContentSafetyRail
from guardrails.rails.schema import JsonSchemaRail
from guardrails.stream import StreamGuard
from guardrails.verdict import Finding, Verdict
from llmops.config import SHIPPED_CONFIGS
from llmops.contracts import CONTEXT_PART_KEY, TEXT_PART_KEYS, RegistryAPI, VerdictLike

log = logging.getLogger(__name__)
DROPPED_PASSAGE = "[passage removed: it contained instructions to the assistant]"
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
        overridden = [n for table in (policy.per_model, policy.per_key) for n, o in table.items() if o.categories]
        if overridden and not any(isinstance(r, ContentSafetyRail) for r in self.input_rails + self.output_rails):
            log.warning("per_model / per_key 'categories' for %s have no effect: the policy has no content_safety "
                        "rail", ", ".join(sorted(overridden)))
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
    def check_input(self, messages: Any, model: str | None = None, key: str | None = None,
                    tools: Any = None) -> Verdict:
        """Check an OpenAI-style message list and the request's ``tools``.

        Everything a client sends is checked, whatever its role (system, developer, user, assistant
        history or prefill, tool): message content (string or text parts), ``name``, the names and
        arguments of ``tool_calls`` / ``function_call``, and every string in the tool definitions.
        Text parts marked ``{"llmops_context": true}`` are retrieved passages (data, not the user's
        words): each is checked on its own, and one that the injection rail flags is dropped from the
        request (``context_injection: drop``) or only recorded (``flag``). A redaction is applied in
        place: ``Verdict.messages`` / ``Verdict.tools`` hold what to forward."""
        t0 = time.perf_counter()
        try:
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                return self._verdict(False, "block", "input", [Finding("input", "malformed_messages")], None, t0,
                                     "the message list is malformed")
            if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
                return self._verdict(False, "block", "input", [Finding("input", "malformed_tools")], None, t0,
                                     "the tool list is malformed")
            acc = _Decision(self, self._active(self.input_rails, model, key))
            out_messages = [acc.message(m) for m in messages if not acc.blocked]
            out_tools = [acc.strings(t) for t in (tools or []) if not acc.blocked]
            acc.whole()
            redacted = acc.action == "redact"
            return self._verdict(not acc.blocked, acc.action, acc.rail, acc.findings, None, t0, acc.reason,
                                 tuple(out_messages) if redacted else None,
                                 tuple(out_tools) if redacted and tools is not None else None)
        except Exception as e:  # noqa: BLE001 - a guard must answer, not raise
            return self._error(e, t0)

    def check_embeddings(self, texts: list[str], model: str | None = None, key: str | None = None) -> Verdict:
        """Texts to embed, each judged by the policy's ``embedding_rails`` (pii by default): a redaction
        comes back as ``Verdict.messages`` (``{"content": text}`` per input, in order) to embed instead."""
        t0 = time.perf_counter()
        try:
            wanted = set(self.policy.embedding_rails)
            rails = [r for r in self._active(self.input_rails, model, key) if r.name in wanted]
            acc = _Decision(self, rails)
            out = [acc.text(t) for t in texts]
            return self._verdict(not acc.blocked, acc.action, acc.rail, acc.findings, None, t0, acc.reason,
                                 tuple({"content": t} for t in out) if acc.action == "redact" else None)
        except Exception as e:  # noqa: BLE001
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
            action, rail_name, reason, new_text, findings = self._run(rails, text, "output", context,
                                                                      partial=partial)
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

    def stream_checker(self, model: str | None = None, key: str | None = None,
                       whole_answer: bool = True) -> StreamGuard:
        """A checker for streamed answers that holds back only what could still grow into a finding
        (``whole_answer=False``: tool-call arguments, which the whole-answer rails do not judge)."""
        return StreamGuard(self, model, key, whole_answer)

    def checks_output(self, model: str | None = None, key: str | None = None) -> bool:
        """Some output rail applies to this model and key (it may hold back, redact or stop text)."""
        return bool(self._active(self.output_rails, model, key))

    # -------------------------------------------------------------- internals
    def _active(self, rails: list[Rail], model: str | None, key: str | None) -> list[Rail]:
        """The rails that apply to this model and key: disabled ones left out, content_safety with the
        category actions of the model's and then the key's overrides (the key's win)."""
        off, categories = set(), {}
        for table, name in ((self.policy.per_model, model), (self.policy.per_key, key)):
            if name and name in table:
                off |= set(table[name].disable)
                categories.update(table[name].categories)
        out = [r for r in rails if r.name not in off]
        if categories:
            out = [r.with_categories(categories) if isinstance(r, ContentSafetyRail) else r for r in out]
        return out

    def _run(self, rails: list[Rail], text: str, stage: Literal["input", "output"],
             context: list[str] | None = None, data: bool = False, partial: bool = False,
             role: str | None = None):
        """Apply rails in order -> (action, rail, reason, text after redaction, findings). ``data``: the
        text is a retrieved passage; an injection finding there drops the passage or only flags it."""
        ctx = CheckContext.of(text, stage, context, self.embed, partial, role)
        action, rail_name, reason, findings = "allow", None, None, []
        for rail in rails:
            if data and not rail.judges_passages:
                continue
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
            if data and rail.name == "injection":  # a passage is data: drop it or flag it, never block for it
                findings += [Finding(f.rail, "context:" + f.label, f.span, f.score) for f in res.findings]
                drop = self.policy.context_injection == "drop"
                if _ORDER["redact" if drop else "warn"] > _ORDER[action]:
                    action, rail_name = ("redact" if drop else "warn"), rail.name
                    reason = "instructions planted in a retrieved passage"
                if drop:
                    return action, rail_name, reason, DROPPED_PASSAGE, findings
                continue
            findings += res.findings
            act = res.action or rail.cfg.action
            if act == "redact" and res.text is not None:
                text = res.text
                ctx = CheckContext.of(text, stage, context, self.embed, partial, role)
            if _ORDER[act] > _ORDER[action]:
                action, rail_name, reason = act, rail.name, res.reason
            if act == "block":
                break
        return action, rail_name, reason, text, findings

    def _verdict(self, allowed, action, rail, findings, text, t0, reason=None, messages=None,
                 tools=None) -> Verdict:
        """Every block, whatever caused it, carries the policy's refusal text (what a caller shows)."""
        return Verdict(allowed, action, rail, text if allowed else self.policy.refusal_text, tuple(findings),
                       (time.perf_counter() - t0) * 1000, reason, messages, tools)

    def _error(self, e: Exception, t0: float) -> Verdict:
        log.warning("guard failed: %s", e)
        block = self.policy.on_rail_error == "block"
        return self._verdict(not block, "block" if block else "warn", "guard", [Finding("guard", "error")],
                             None, t0, f"the guard failed ({type(e).__name__})")


class _Decision:
    """The running verdict of one check_input: the strongest action so far, its rail and reason, the
    findings; each method judges one piece of the request and returns it as it is to be forwarded. The
    user's words of every piece are also kept, so an attack split across messages or fields can be judged
    whole at the end (:meth:`whole`)."""

    def __init__(self, guard: Guard, rails: list[Rail]) -> None:
        self.guard, self.rails = guard, rails
        self.action, self.rail, self.reason = "allow", None, None
        self.role: str | None = None  # the role of the message being judged (rails may read it)
        self.findings: list[Finding] = []
        self.words: list[str] = []  # every text judged as the user's words, in request order
        self.user_words: list[str] = []  # those of them not in system / developer messages

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    def block(self, label: str, reason: str) -> None:
        self.findings.append(Finding("input", label))
        self.action, self.rail, self.reason = "block", "input", reason

    def text(self, text: str, data: bool = False, record: bool = True) -> str:
        """Judge one text; return it redacted (or unchanged). ``record=False``: a piece of a text already
        judged whole, redacted on its own (its findings are counted once)."""
        if self.blocked or not text:
            return text
        if record and not data:
            self.words.append(text)
            if self.role not in OPERATOR_ROLES:
                self.user_words.append(text)
        # a passage is data whatever message carries it: no rail treats it as the operator's instructions
        a, r, why, new_text, found = self.guard._run(self.rails, text, "input", data=data,
                                                     role=None if data else self.role)
        if record:
            self.findings += found
        if _ORDER[a] > _ORDER[self.action]:
            self.action, self.rail, self.reason = a, r, why
        return new_text

    def whole(self) -> None:
        """The injection rail once more over all the user's words joined: pieces that are harmless one by
        one (two messages, a name and its content, tool arguments) may spell an attack together."""
        if self.blocked or len(self.words) < 2:
            return
        rails = [r for r in self.rails if r.name == "injection"]
        if not rails:
            return
        # all the words joined read as the operator's when part of them is (injection's embedding stage leaves
        # those to rules and n-grams); the user's words alone are then joined once more, judged as the user's
        joined = [("\n".join(self.words), "system" if len(self.user_words) < len(self.words) else "user")]
        if joined[0][1] == "system" and len(self.user_words) >= 2:
            joined.append(("\n".join(self.user_words), "user"))
        for text, role in joined:
            a, r, why, _, found = self.guard._run(rails, text, "input", role=role)
            if a == "block":
                self.findings += found
                self.action, self.rail, self.reason = a, r, why
                return

    def message(self, m: dict) -> dict:
        self.role = m.get("role") if isinstance(m.get("role"), str) else None
        try:
            return self._message(m)
        finally:
            self.role = None

    def _message(self, m: dict) -> dict:
        out = dict(m)
        for k, v in m.items():  # name, reasoning, tool_call_id, tools ...: all reach the template, name first
            if k not in ("role", "content", "tool_calls") and not self.blocked:
                out[k] = self.strings(v)
        content = m.get("content")
        if isinstance(content, str):
            out["content"] = self.text(content)
        elif isinstance(content, list):
            out["content"] = self.parts(content)
        if isinstance(m.get("tool_calls"), list):
            out["tool_calls"] = [self.strings(c) for c in m["tool_calls"]]
        return out

    def parts(self, parts: list) -> list:
        """List content: the user's text parts are judged together (an attack split over parts is seen
        whole) and redacted part by part (merged into one part only when a finding spans parts); passages
        marked as context are judged one by one and together, as data."""
        words = [i for i, p in enumerate(parts) if _part_key(p) and not p.get(CONTEXT_PART_KEY)]
        joined = "\n".join(parts[words_i][_part_key(parts[words_i])] for words_i in words)
        out = list(parts)
        if self.text(joined) != joined:
            for i in words:
                out[i] = {**parts[i], _part_key(parts[i]): self.text(parts[i][_part_key(parts[i])], record=False)}
            again = "\n".join(out[i][_part_key(out[i])] for i in words)
            if self.text(again, record=False) != again:  # a finding spans parts: one redacted part
                out[words[0]] = {**parts[words[0]], _part_key(parts[words[0]]): self.text(joined, record=False)}
                for i in words[1:]:
                    out[i] = None
        for i, p in enumerate(parts):  # parts of other types: their strings, as any field
            if isinstance(p, dict) and not _part_key(p) and p.get("type") not in MEDIA_PARTS and not self.blocked:
                out[i] = self.strings({k: v for k, v in p.items() if k != "type"})
                out[i] = {"type": p.get("type"), **out[i]}
        marked = [i for i, p in enumerate(parts) if _part_key(p) and p.get(CONTEXT_PART_KEY)]
        for i in marked:
            key = _part_key(parts[i])
            new_text = self.text(parts[i][key], data=True)
            if new_text != parts[i][key]:
                out[i] = {**parts[i], key: new_text}
        kept = [i for i in marked if out[i][_part_key(out[i])] != DROPPED_PASSAGE]
        if len(kept) > 1:  # passages that spell instructions only together: all of them go
            together = "\n".join(out[i][_part_key(out[i])] for i in kept)
            if self.text(together, data=True, record=False) == DROPPED_PASSAGE:
                self.findings.append(Finding("injection", "context:split"))
                for i in kept:
                    out[i] = {**out[i], _part_key(out[i]): DROPPED_PASSAGE}
        return [p for p in out if p is not None]

    def strings(self, obj: Any) -> Any:
        """A tool definition, tool call or other field: every string in it, keys included, judged together;
        when redacted, each string is redacted on its own (a finding that spans strings blocks)."""
        leaves: list[str] = []
        if not _collect(obj, leaves):
            self.block("too_deep", f"a field is nested deeper than {MAX_DEPTH} levels")
            return obj
        if not leaves:
            return obj
        joined = "\n".join(leaves)
        if self.text(joined) == joined:
            return obj
        mapped = _map_strings(obj, lambda t: self.text(t, record=False))
        rest: list[str] = []
        _collect(mapped, rest)
        again = "\n".join(rest)
        if not self.blocked and self.text(again, record=False) != again:
            self.block("split_finding", "a finding spans several strings of a field and cannot be redacted")
        return mapped


# Media parts carry data, not text; any other part's strings are judged like a field.
MEDIA_PARTS = frozenset({"image_url", "input_image", "image_embeds", "input_audio", "audio_url", "video_url", "file"})
MAX_DEPTH = 64


def _part_key(p: Any) -> str | None:
    """The key of a content part that holds its text (by the part's type), or None."""
    if not isinstance(p, dict):
        return None
    key = TEXT_PART_KEYS.get(p.get("type"))
    return key if key and isinstance(p.get(key), str) else None


def _collect(obj: Any, out: list[str], depth: int = 0) -> bool:
    """Every string in ``obj``, dict keys included; False when it is nested deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str):
                out.append(k)
            if not _collect(v, out, depth + 1):
                return False
    elif isinstance(obj, list):
        for v in obj:
            if not _collect(v, out, depth + 1):
                return False
    return True


def _map_strings(obj: Any, fn, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        return obj
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        return {(fn(k) if isinstance(k, str) else k): _map_strings(v, fn, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_strings(v, fn, depth + 1) for v in obj]
    return obj
