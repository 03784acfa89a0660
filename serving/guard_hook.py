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
    def check_input(self, messages: list[dict]) -> Verdict: ...

    def check_output(self, text: str) -> Verdict: ...

    def stream_checker(self) -> StreamChecker: ...


class _PassThroughStream:
    def feed(self, text: str) -> tuple[str, Verdict | None]:
        return text, None

    def finish(self) -> tuple[str, Verdict]:
        return "", Verdict.allow()


class PassThrough:
    """Allows everything and holds nothing back."""

    passthrough = True

    def check_input(self, messages: list[dict]) -> Verdict:
        return Verdict.allow()

    def check_output(self, text: str) -> Verdict:
        return Verdict.allow(text)

    def stream_checker(self) -> StreamChecker:
        return _PassThroughStream()


def load_hook(cfg: GuardrailsHookConfig) -> GuardHook:
    """The configured hook (pass-through when disabled).

    Raises:
        LLMOpsError: the guardrails module or its policy cannot be loaded.
    """
    if not cfg.enabled:
        return PassThrough()
    from guardrails.guard import Guard  # noqa: PLC0415 - issue #6

    return Guard.from_config(cfg.config)
