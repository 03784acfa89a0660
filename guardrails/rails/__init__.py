"""The rails, one class each, by name: ``RAILS["pii"]`` is :class:`guardrails.rails.pii.PiiRail`.

A new rail is a module here with a ``Config`` (``rail: Literal[name]``) and a :class:`Rail`
subclass, added to :data:`RAILS`; the policy's discriminated union is built from this table.
"""

from __future__ import annotations

from guardrails.rails.base import Rail
from guardrails.rails.content_safety import ContentSafetyConfig, ContentSafetyRail
from guardrails.rails.grounded import GroundednessConfig, GroundednessRail
from guardrails.rails.injection import InjectionConfig, InjectionRail
from guardrails.rails.length import LengthConfig, LengthRail
from guardrails.rails.pii import PiiConfig, PiiRail
from guardrails.rails.schema import JsonSchemaConfig, JsonSchemaRail
from guardrails.rails.selfcheck import SelfCheckConfig, SelfCheckRail
from guardrails.rails.topics import TopicsConfig, TopicsRail
from guardrails.rails.toxicity import ToxicityConfig, ToxicityRail

# name -> (config model, rail class)
RAILS: dict[str, tuple[type, type[Rail]]] = {
    "length": (LengthConfig, LengthRail),
    "injection": (InjectionConfig, InjectionRail),
    "pii": (PiiConfig, PiiRail),
    "topics": (TopicsConfig, TopicsRail),
    "toxicity": (ToxicityConfig, ToxicityRail),
    "content_safety": (ContentSafetyConfig, ContentSafetyRail),
    "json_schema": (JsonSchemaConfig, JsonSchemaRail),
    "groundedness": (GroundednessConfig, GroundednessRail),
    "self_check": (SelfCheckConfig, SelfCheckRail),
}
