"""JSON-schema validation of structured answers and the one re-ask that repairs them.

The re-ask appends the invalid answer and the validation error to the conversation and asks again
with the schema as ``response_format``, so an engine with structured output (vLLM) is constrained
to it the second time.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import Field

from guardrails.rails.base import BaseRailConfig, CheckContext, Rail, RailResult
from guardrails.verdict import Finding


def strip_fence(text: str) -> str:
    """The JSON inside a ```json fence (models often add one); the text itself otherwise."""
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        t = t.rsplit("```", 1)[0]
    return t


def schema_error(text: str, schema: dict[str, Any]) -> str | None:
    """Why ``text`` is not a JSON value matching ``schema``; None when it is."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(strip_fence(text)), schema)
        return None
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at character {e.pos})"
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "the top level"
        return f"{e.message} (at {where})"


def reask_request(messages: list[dict], answer: str, error: str, schema: dict[str, Any]) -> dict[str, Any]:
    """``{"messages", "response_format"}`` for the one re-ask after an answer failed ``schema``."""
    fix = (f"Your answer does not match the required JSON Schema: {error}. Reply again with only a JSON value "
           f"that matches this schema, no other text:\n{json.dumps(schema)}")
    return {
        "messages": [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": fix}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    }


class JsonSchemaConfig(BaseRailConfig):
    """Answers must be JSON that matches a schema (whole answers only)."""

    rail: Literal["json_schema"] = Field(description="This rail.")
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema.")
    reask: bool = Field(True, description="Re-ask the model once with the error (gateway chat completions).")


class JsonSchemaRail(Rail):
    name: ClassVar[str] = "json_schema"
    stages: ClassVar[frozenset[str]] = frozenset({"output"})
    whole_answer: ClassVar[bool] = True
    cfg: JsonSchemaConfig

    def check(self, text: str, ctx: CheckContext) -> RailResult:
        error = schema_error(text, self.cfg.schema_)
        return RailResult(error is not None, [Finding(self.name, "invalid_json")], None,
                          f"answer does not match the schema: {error}")

    def reask(self, messages: list[dict], answer: str) -> dict[str, Any] | None:
        """The request fields of the one re-ask, or None (re-asking off, or the answer is valid)."""
        error = schema_error(answer, self.cfg.schema_) if self.cfg.reask else None
        return reask_request(messages, answer, error, self.cfg.schema_) if error else None
