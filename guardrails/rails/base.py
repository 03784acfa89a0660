"""What every rail shares: its config's common fields, what a check gets and what it returns.

A rail is a class with a ``name``, the ``stages`` it may run in, a ``Config`` (a pydantic model
whose ``rail`` field is ``Literal[name]``, one member of the policy's discriminated union) and
``check``; :mod:`guardrails.rails` lists them by name::

    rail = RAILS["length"](LengthConfig(rail="length", max_chars=10))
    rail.check("x" * 20, CheckContext.of("x" * 20, stage="input")).fired   # True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field

from guardrails.verdict import Finding
from llmops.config import StrictModel
from llmops.contracts import RegistryAPI
from llmops.textnorm import variants

# Messages that carry the operator's instructions rather than the user's words (input side)
OPERATOR_ROLES = frozenset({"system", "developer"})
# A share or probability in [0, 1]; `null` in a policy file means the rail's default, 0.5.
Threshold = Annotated[float, BeforeValidator(lambda v: 0.5 if v is None else v), Field(ge=0, le=1)]


class BaseRailConfig(StrictModel):
    """Fields every rail has."""

    action: Literal["block", "warn"] = Field("block", description="What a finding does.")


@dataclass
class CheckContext:
    """What a check may look at besides the text: its normalised variants (computed once per text),
    the stage, the retrieved chunks (groundedness), an embedder (groundedness, optional), whether it is a
    piece of a stream, and on the input side the role of the message it comes from."""

    forms: list[str]
    stage: Literal["input", "output"]
    context: list[str] | None = None
    embed: Callable[[list[str]], Any] | None = None
    partial: bool = False  # a piece of a stream (the whole answer is checked again at its end)
    role: str | None = None  # input: the role of the message the text comes from

    @classmethod
    def of(cls, text: str, stage: Literal["input", "output"], context: list[str] | None = None,
           embed: Callable[[list[str]], Any] | None = None, partial: bool = False,
           role: str | None = None) -> CheckContext:
        return cls(variants(text), stage, context, embed, partial, role)


@dataclass
class RailResult:
    """``fired``: the rail found something; ``text``: the redacted text (pii with action redact); ``action``:
    the action the rail chose for this finding (content_safety's per-category actions), else the config's."""

    fired: bool
    findings: list[Finding] = field(default_factory=list)
    text: str | None = None
    reason: str | None = None
    action: str | None = None  # this finding's action when the rail decides it (per category); else cfg.action


class Rail:
    """Base of every rail: keeps the config; subclasses set the class fields and ``check``."""

    name: ClassVar[str]
    stages: ClassVar[frozenset[str]] = frozenset({"input", "output"})
    whole_answer: ClassVar[bool] = False  # judges a whole answer only (skipped on pieces of a stream)
    blocking_io: ClassVar[bool] = False  # a network call or a slow local model (callers on an event loop use a thread)
    judges_passages: ClassVar[bool] = True  # also runs on retrieved passages (RAG context marked as data)

    def __init__(self, cfg: Any, registry: RegistryAPI | None = None) -> None:
        self.cfg = cfg

    def check(self, text: str, ctx: CheckContext) -> RailResult:
        raise NotImplementedError
