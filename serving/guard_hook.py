"""The gateway's guard: the policy's :class:`guardrails.guard.Guard` when ``guardrails.enabled``,
else a pass-through. Both implement :class:`llmops.contracts.GuardHook`.
"""

from __future__ import annotations

from typing import Any

from guardrails.verdict import Verdict
from llmops.contracts import GuardHook, RegistryAPI, StreamChecker, VerdictLike
from serving.config import GuardrailsHookConfig


class _PassThroughStream:
    def feed(self, text: str) -> tuple[str, Verdict | None]:
        return text, None

    def finish(self) -> tuple[str, Verdict]:
        return "", Verdict.allow()


class PassThrough:
    """Allows everything and holds nothing back (streams are relayed untouched)."""

    blocking_io = False
    passthrough = True

    def check_input(self, messages: list[dict], model: str | None = None, key: str | None = None,
                    tools: list[dict] | None = None) -> Verdict:
        return Verdict.allow()

    def check_output(self, text: str, context: list[str] | None = None, model: str | None = None,
                     key: str | None = None, partial: bool = False) -> Verdict:
        return Verdict.allow(text)

    def check_embeddings(self, texts: list[str], model: str | None = None, key: str | None = None) -> Verdict:
        return Verdict.allow()

    def stream_checker(self, model: str | None = None, key: str | None = None,
                       whole_answer: bool = True) -> StreamChecker:
        return _PassThroughStream()

    def checks_output(self, model: str | None = None, key: str | None = None) -> bool:
        return False

    def reask(self, verdict: VerdictLike, messages: list[dict], answer: str, model: str | None = None,
              key: str | None = None) -> dict[str, Any] | None:
        return None


def load_hook(cfg: GuardrailsHookConfig, registry: RegistryAPI | None = None) -> GuardHook:
    """The configured hook (pass-through when disabled); ``registry`` holds the policy's classifier.

    Raises:
        LLMOpsError: the guardrails module or its policy cannot be loaded.
    """
    if not cfg.enabled:
        return PassThrough()
    from llmops.plugins import load_guard

    return load_guard(cfg.config, registry)
