"""Guardrail policy (``configs/guardrails/*.yaml``): ordered input and output rails with actions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llmops.config import StrictModel

RailName = Literal["injection", "pii", "topics", "length", "toxicity", "json_schema", "groundedness", "self_check"]
INPUT_RAILS = {"injection", "pii", "topics", "length", "self_check"}
OUTPUT_RAILS = {"pii", "toxicity", "json_schema", "groundedness", "topics", "self_check"}


class JudgeConfig(StrictModel):
    """The served model the self_check rail asks (any OpenAI-compatible endpoint with structured output)."""

    base_url: str = Field(description="Endpoint, e.g. http://127.0.0.1:8000/v1 (the engine behind the gateway).")
    model: str = Field(description="Model name at that endpoint.")
    api_key_env: str | None = Field(None, description="Environment variable holding the endpoint's API key.")
    timeout_s: float = Field(10, gt=0, description="Per-check timeout; a timeout counts as a rail error.")
    max_chars: int = Field(4000, ge=200, description="Longer text is judged by its head and tail.")


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
    presidio: Literal["off", "auto", "required"] = Field(
        "off", description="pii: add Presidio's recognisers (offline pattern recognisers; more entity types, "
        "~5-10 ms per 1,000 tokens). auto: when presidio-analyzer is installed; required: fail without it.")
    presidio_min_score: float = Field(0.5, ge=0, le=1, description="pii: lowest Presidio score kept.")
    banned: list[str] = Field(default_factory=list, description="topics: banned words or phrases.")
    max_chars: int | None = Field(None, ge=1, description="length: longest allowed text.")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="json_schema: the JSON Schema.")
    extra_terms: list[str] = Field(default_factory=list, description="toxicity: more terms to flag.")
    judge: JudgeConfig | None = Field(None, description="self_check: the model that judges.")
    reask: bool = Field(True, description="json_schema: re-ask the model once (gateway chat completions).")

    @field_validator("presidio", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v  # YAML reads off as False

    @model_validator(mode="after")
    def _check(self) -> RailConfig:
        if self.action == "redact" and self.rail != "pii":
            raise ValueError(f"action redact applies to the pii rail only, not {self.rail}")
        if self.rail == "length" and self.max_chars is None:
            raise ValueError("the length rail needs max_chars")
        if self.rail == "json_schema" and self.schema_ is None:
            raise ValueError("the json_schema rail needs a schema")
        if self.rail == "pii" and self.presidio == "required":
            from guardrails.rails import presidio

            if not presidio.installed():
                raise ValueError("presidio: required, but presidio-analyzer is not installed "
                                 "(pip install -e '.[presidio]', or set presidio: auto)")
        if self.rail == "self_check" and self.judge is None:
            raise ValueError("the self_check rail needs a judge (base_url and model of a served model)")
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
        64, ge=8, description="Streams: released text each check looks back on (a phrase or secret split across "
        "chunks), and the most a run of digit groups may hold back (one unbroken word is held whole).")
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
