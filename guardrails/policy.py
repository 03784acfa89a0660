"""Guardrail policy (``configs/guardrails/*.yaml``): ordered input and output rails with actions."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from guardrails.datasets.safety import check_categories
from guardrails.rails import RAILS
from guardrails.rails.selfcheck import JudgeConfig
from llmops.config import StrictModel

__all__ = ["JudgeConfig", "Overrides", "PolicyConfig", "RailConfig", "RailName"]

# Both built from the rail table: a new rail is added in guardrails/rails/ only.
RailName = Literal[tuple(RAILS)]  # type: ignore[valid-type]
# One config model per rail, told apart by its ``rail`` key: a key that belongs to another rail is an
# unknown key with its line, like every other config error.
RailConfig = Annotated[Union[tuple(cfg for cfg, _ in RAILS.values())], Field(discriminator="rail")]  # noqa: UP007


class Overrides(StrictModel):
    """Rails switched off, and content-safety categories' actions, for a model or an API key."""

    disable: list[RailName] = Field(default_factory=list, description="Rails not applied.")
    categories: dict[str, Literal["block", "warn", "allow"]] = Field(
        default_factory=dict, description="content_safety: action per category for this model or key (a key's "
        "override wins over its model's).")

    _known = field_validator("categories")(classmethod(lambda cls, v: check_categories(v)))


class PolicyConfig(StrictModel):
    """The guardrail policy."""

    input_rails: list[RailConfig] = Field(default_factory=list, description="Rails on prompts, in order.")
    output_rails: list[RailConfig] = Field(default_factory=list, description="Rails on answers, in order.")
    refusal_text: str = Field("I can't help with that request.", description="Answer shown when blocked.")
    stream_holdback_chars: int = Field(
        64, ge=8, description="Streams: released text each check looks back on (a phrase or secret split across "
        "chunks), and the most a run of digit groups may hold back (one unbroken word is held whole).")
    on_rail_error: Literal["allow", "block"] = Field(
        "allow", description="If a rail itself fails: let the text through (flagged) or block it."
    )
    context_injection: Literal["drop", "flag"] = Field(
        "drop", description="A retrieved passage (a text part marked llmops_context) in which the injection rail "
        "finds instructions: drop it from the request (the rest goes on) or only flag it (request log, metrics).")
    embedding_rails: list[RailName] = Field(
        default_factory=lambda: ["pii"], description="Input rails (as configured in input_rails) that also judge "
        "/v1/embeddings input, each text on its own: pii redacts what is embedded. [] : embeddings unchecked.")
    per_model: dict[str, Overrides] = Field(default_factory=dict, description="Overrides by model id.")
    per_key: dict[str, Overrides] = Field(default_factory=dict, description="Overrides by API key id.")

    def without_classifiers(self) -> PolicyConfig:
        """A copy with every rail's registered classifier switched off (rules and lexicons only): what they
        catch on their own, whatever a registry holds (tests, benchmark baselines)."""
        out = self.model_copy(deep=True)
        for rail in out.input_rails + out.output_rails:
            if getattr(rail, "classifier", None) is not None:
                rail.classifier = None
        return out

    @model_validator(mode="after")
    def _stages(self) -> PolicyConfig:
        bad = [r.rail for r in self.input_rails if "input" not in RAILS[r.rail][1].stages]
        bad += [r.rail for r in self.output_rails if "output" not in RAILS[r.rail][1].stages]
        if bad:
            stage = {s: sorted(n for n, (_, cls) in RAILS.items() if s in cls.stages) for s in ("input", "output")}
            raise ValueError(f"rails in the wrong stage: {bad} (input: {stage['input']}, output: {stage['output']})")
        return self
