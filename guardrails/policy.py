"""Guardrail policy (``configs/guardrails/*.yaml``): ordered input and output rails with actions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from llmops.config import StrictModel

RailName = Literal["injection", "pii", "topics", "length", "toxicity", "json_schema", "groundedness"]
INPUT_RAILS = {"injection", "pii", "topics", "length"}
OUTPUT_RAILS = {"pii", "toxicity", "json_schema", "groundedness", "topics"}


class RailConfig(StrictModel):
    """One rail and what happens when it fires."""

    rail: RailName = Field(description="Which rail.")
    action: Literal["block", "redact", "warn"] = Field("block", description="What a finding does.")
    threshold: float | None = Field(
        None, ge=0, le=1,
        description="injection: classifier probability from which it fires (default 0.5); "
        "groundedness: minimum supported share (default 0.5).",
    )
    classifier: str | None = Field(
        None, description="injection: registry ref of the text classifier (e.g. injection-classifier@champion)."
    )
    classifier_required: bool = Field(
        False, description="injection: fail loading when the classifier cannot be resolved (else rules only)."
    )
    classifier_min_words: int = Field(
        4, ge=1, description="injection: prompts with fewer words are judged by the rules only (a TF-IDF "
        "classifier has no signal on 'Hello!' and scored it above 0.8).")
    entities: list[str] | None = Field(None, description="pii: entity types to find (None: all).")
    banned: list[str] = Field(default_factory=list, description="topics: banned words or phrases.")
    max_chars: int | None = Field(None, ge=1, description="length: longest allowed text.")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="json_schema: the JSON Schema.")
    extra_terms: list[str] = Field(default_factory=list, description="toxicity: more terms to flag.")

    @model_validator(mode="after")
    def _check(self) -> RailConfig:
        if self.action == "redact" and self.rail != "pii":
            raise ValueError(f"action redact applies to the pii rail only, not {self.rail}")
        if self.rail == "length" and self.max_chars is None:
            raise ValueError("the length rail needs max_chars")
        if self.rail == "json_schema" and self.schema_ is None:
            raise ValueError("the json_schema rail needs a schema")
        return self


class Overrides(StrictModel):
    """Rails switched off for a model or an API key."""

    disable: list[RailName] = Field(default_factory=list, description="Rails not applied.")


class PolicyConfig(StrictModel):
    """The guardrail policy."""

    input_rails: list[RailConfig] = Field(default_factory=list, description="Rails on prompts, in order.")
    output_rails: list[RailConfig] = Field(default_factory=list, description="Rails on answers, in order.")
    refusal_text: str = Field("I can't help with that request.", description="Answer shown when blocked.")
    stream_holdback_chars: int = Field(
        64, ge=8, description="Streamed text held back so a secret split across chunks is still caught."
    )
    on_rail_error: Literal["allow", "block"] = Field(
        "allow", description="If a rail itself fails: let the text through (flagged) or block it."
    )
    per_model: dict[str, Overrides] = Field(default_factory=dict, description="Overrides by model id.")
    per_key: dict[str, Overrides] = Field(default_factory=dict, description="Overrides by API key id.")

    @model_validator(mode="after")
    def _stages(self) -> PolicyConfig:
        bad = [r.rail for r in self.input_rails if r.rail not in INPUT_RAILS]
        bad += [r.rail for r in self.output_rails if r.rail not in OUTPUT_RAILS]
        if bad:
            raise ValueError(f"rails in the wrong stage: {bad} (input: {sorted(INPUT_RAILS)}, "
                             f"output: {sorted(OUTPUT_RAILS)})")
        return self
