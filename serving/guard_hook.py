"""The gateway's guardrail hook: input rails, output rails, and a streaming checker.

Until the guardrails module lands (issue #6) the hook is a pass-through that allows everything;
with ``guardrails.enabled`` the gateway loads ``guardrails.guard.Guard`` from the policy file.
"""

from __future__ import annotations

from typing import Protocol

from guardrails.verdict import Verdict
from serving.config import GuardrailsHookConfig


class StreamChecker(Protocol):
    def feed(self, text: str) -> tuple[str, Verdict | None]:
        """Take a chunk; return the text safe to release now and a blocking verdict, if any."""

    def finish(self) -> tuple[str, Verdict]:
        """Release what was held back at the end of the stream, with the final verdict."""


class GuardHook(Protocol):
    """``model`` (public model name) and ``key`` (API key id) select per-model / per-key policies."""

    def check_input(self, messages: list[dict], model: str | None = None, key: str | None = None) -> Verdict: ...

    def check_output(self, text: str, model: str | None = None, key: str | None = None) -> Verdict: ...

    def stream_checker(self, model: str | None = None, key: str | None = None) -> StreamChecker: ...


class _PassThroughStream:
    def feed(self, text: str) -> tuple[str, Verdict | None]:
        return text, None

    def finish(self) -> tuple[str, Verdict]:
        return "", Verdict.allow()


class PassThrough:
    """Allows everything and holds nothing back."""

    passthrough = True

    def check_input(self, messages: list[dict], model: str | None = None, key: str | None = None) -> Verdict:
        return Verdict.allow()

    def check_output(self, text: str, model: str | None = None, key: str | None = None) -> Verdict:
        return Verdict.allow(text)

    def stream_checker(self, model: str | None = None, key: str | None = None) -> StreamChecker:
        return _PassThroughStream()


def load_hook(cfg: GuardrailsHookConfig) -> GuardHook:
    """The configured hook (pass-through when disabled).

    Raises:
        LLMOpsError: the guardrails module or its policy cannot be loaded.
    """
    if not cfg.enabled:
        return PassThrough()
    from guardrails.guard import Guard

    return Guard.from_config(cfg.config)
