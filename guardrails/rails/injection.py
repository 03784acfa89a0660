"""Prompt-injection / jailbreak detection: rules on every normalised variant, plus a classifier.

The rules catch the families seen in public jailbreak corpora (instruction override, persona
jailbreaks such as DAN / developer mode, system-prompt extraction, chat-template token smuggling,
safety-bypass requests). The classifier (TF-IDF + logistic regression, trained by
``classic_ml.text`` and registered in the registry) scores what the rules do not name.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from guardrails.rails.base import BaseRailConfig, CheckContext, Rail, RailResult, Threshold
from guardrails.verdict import Finding
from llmops.contracts import RegistryAPI
from llmops.textnorm import head_and_tail

log = logging.getLogger(__name__)

_O = r"(?:all|any|every|your|my|these|those|previous|prior|above|earlier|preceding|initial|original|system|safety)"
_RULES: list[tuple[str, str]] = [
    ("override", rf"\b(?:ignore|disregard|forget|skip|bypass|override|overlook|neglect|drop|abandon)\b[\w\s,'-]{{0,20}}?"
                 rf"\b{_O}\s+(?:\w+\s+){{0,3}}?(?:instructions?|rules?|guidelines?|prompts?|directives?|"
                 r"constraints?|restrictions?|policies|policy|programming|training|commands?|orders?)\b"),
    ("override", r"\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+)?(?:of\s+)?(?:the\s+|that\s+)?"
                 r"(?:above|previous|prior|preceding|earlier)(?:\s+(?:text|message|messages|content))?\s*(?:[.,!:;]|and|$)"),
    ("override", r"\bforget (?:everything|all|what) (?:you|that)\b[\w\s']{0,30}\b(?:told|taught|instructed|learned|said)\b"),
    ("override", r"\b(?:new|updated|revised|real|actual)\s+(?:system\s+)?(?:instructions?|rules|directives?)\s*[:\-]"),
    ("override", r"\bfrom now on\b[\w\s,']{0,40}\b(?:you (?:are|will|must|shall)|respond|answer|act|ignore)\b"),
    ("override", r"\b(?:stop|cease) (?:being|acting as) (?:an? )?(?:ai|assistant|chatbot|language model)\b"),
    ("persona", r"\b(?:you are|you're|act as|become|pretend to be|roleplay as|stay|respond as|answer as)\s+"
                r"(?:now\s+|a\s+)?(?:DAN|STAN|DUDE|AIM|KEVIN|BetterDAN|Mongo Tom)\b"),
    ("persona", r"\b(?:DAN|STAN|DUDE) (?:mode|prompt|jailbreak)\b|\bBetterDAN\b|\bMongo Tom\b"),
    ("persona", r"\b(?:unfiltered|evil|chaos|opposite|unrestricted) mode\b|\bjailbroken\b"),
    ("persona", r"\bdo anything now\b"),
    ("persona", r"\b(?:developer|dev|god|admin|debug|sudo) mode\b[^.?!]{0,80}\byou(?:r)?\b"),
    ("persona", r"\b(?:you are|you're|act as|pretend (?:to be|you are)|roleplay as|role-play as|become|simulate)\b"
                r"[\w\s,'-]{0,30}\b(?:unrestricted|unfiltered|uncensored|amoral|immoral|without (?:any )?"
                r"(?:restrictions|limits|filters|rules|ethics|morals|guidelines)|no (?:restrictions|limits|filters|"
                r"rules|ethics|morals|guidelines)|free from|not bound by|jailbroken|evil)\b"),
    ("persona", r"\b(?:no|without|free of|free from|ignore|remove|disable|turn off)\s+(?:any\s+|all\s+|your\s+)?"
                r"(?:ethical|moral|safety|content)\s+(?:guidelines|filters?|restrictions|policies|constraints|limits)\b"),
    ("persona", r"\b(?:hypothetical|fictional) (?:world|scenario|story|ai)\b[\w\s,']{0,60}\b(?:no|without) "
                r"(?:rules|restrictions|laws|limits|ethics)\b"),
    ("extraction", r"\b(?:reveal|show|print|repeat|output|display|tell me|give me|what (?:is|are|was|were)|leak|dump|"
                   r"recite|spell out)\b[\w\s,']{0,30}\b(?:your|the)\s+(?:(?:full|entire|complete|original|initial|hidden|"
                   r"secret|exact)\s+)*(?:system\s+prompt|system\s+message|instructions|initial prompt|hidden prompt|"
                   r"pre-?prompt|configuration|rules you were given)\b"),
    ("extraction", r"\brepeat (?:the )?(?:words|text) above\b|\bwhat was written (?:at the top|above)\b"),
    ("smuggling", r"<\|(?:im_start|im_end|system|endoftext|start_header_id|eot_id)\|>|\[/?INST\]|<<SYS>>|"
                  r"<\/?s>\s*\[INST|^\s*(?:system|assistant)\s*:|###\s*(?:system|instruction)s?\s*:"),
    ("bypass", r"\b(?:bypass|circumvent|evade|get around|disable|jailbreak)\b[\w\s,']{0,30}\b(?:safety|filters?|"
               r"guardrails?|content polic(?:y|ies)|moderation|restrictions|censorship|security measures)\b"),
    ("bypass", r"\b(?:enable|activate|enter|switch to|unlock)\b[\w\s]{0,20}\b(?:unrestricted|jailbreak|jailbroken|"
               r"evil|chaos|dan|admin)\s+mode\b"),
]
# A rule runs only when one of its anchor words is in the text: most prompts contain none, so
# the regexes (and their backtracking) are skipped for them. Anchors are the words each rule needs.
ANCHORS = {
    "override": ("instruction", "rule", "guideline", "prompt", "directive", "constraint", "restriction", "polic",
                 "programming", "training", "command", "order", "above", "previous", "prior", "preceding",
                 "earlier", "told", "taught", "learned", "said", "from now on", "being", "acting as"),
    "persona": ("dan", "stan", "dude", "aim", "kevin", "mongo", "mode", "jailbr", "anything now", "restrict",
                "filter", "censor", "moral", "ethic", "evil", "free from", "bound by", "rules", "limits", "laws",
                "guideline", "polic", "constraint"),
    "extraction": ("prompt", "instruction", "system message", "configuration", "rules you were given",
                   "words above", "text above", "written"),
    "smuggling": ("<|", "[inst", "[/inst", "<<sys", "system", "assistant", "###"),
    "bypass": ("safety", "filter", "guardrail", "polic", "moderation", "restriction", "censorship", "security",
               "mode"),
}
# Persona names (DAN, STAN, AIM ...) are matched case-sensitively: "Dan" and "aim" are ordinary words.
_ANCHOR_RX = {family: re.compile("|".join(map(re.escape, words))) for family, words in ANCHORS.items()}
RULES = [(family, re.compile(pattern, re.M if re.search(r"\bDAN\b", pattern) else re.I | re.M), _ANCHOR_RX[family])
         for family, pattern in _RULES]


def rule_hits(variants: list[str]) -> list[tuple[str, tuple[int, int] | None]]:
    """(family, span in the first variant or None) for every rule that matches any variant."""
    lowered = [v.lower() for v in variants]
    present = {family: [bool(rx.search(t)) for t in lowered] for family, rx in _ANCHOR_RX.items()}
    hits = []
    for family, rx, _ in RULES:
        for i, text in enumerate(variants):
            if not present[family][i]:
                continue
            m = rx.search(text)
            if m:
                hits.append((family, (m.start(), m.end()) if i == 0 else None))
                break
    return hits


PROBE_CHARS = 4000  # the classifier reads a long prompt's first 3,000 and last 1,000 characters


class InjectionConfig(BaseRailConfig):
    """Prompt injection and jailbreaks: rules on every normalised variant, plus a registered classifier."""

    rail: Literal["injection"] = Field(description="This rail.")
    threshold: Threshold = Field(0.5, description="Classifier probability from which it fires.")
    classifier: str | None = Field(
        None, description="Registry ref of the text classifier (e.g. injection-classifier@champion).")
    classifier_required: bool = Field(
        False, description="Fail loading when the classifier cannot be resolved (else rules only).")
    classifier_min_words: int = Field(
        1, ge=1, description="Prompts with fewer words are judged by the rules only. 1 (the default): every "
        "prompt goes to the classifier, which learns short ordinary turns from its multilingual chat data.")


class InjectionRail(Rail):
    name: ClassVar[str] = "injection"
    stages: ClassVar[frozenset[str]] = frozenset({"input"})
    cfg: InjectionConfig

    def __init__(self, cfg: InjectionConfig, registry: RegistryAPI | None = None) -> None:
        super().__init__(cfg)
        self.classifier = load_classifier(cfg, registry) if cfg.classifier else None

    def check(self, text: str, ctx: CheckContext) -> RailResult:
        forms = ctx.forms
        fs = [Finding(self.name, f"rule:{family}", span, 1.0) for family, span in rule_hits(forms)]
        if self.classifier is not None and len(forms[0].split()) >= self.cfg.classifier_min_words:
            p = self.classifier(head_and_tail(forms[0], PROBE_CHARS))
            if p >= self.cfg.threshold:
                fs.append(Finding(self.name, "classifier", None, round(p, 4)))
        return RailResult(bool(fs), fs, None, "prompt injection or jailbreak attempt")


def load_classifier(cfg: InjectionConfig, registry: RegistryAPI | None = None) -> Any:
    """text -> probability from the registered classifier, or None (rules only) when it cannot be
    loaded and it is not required.

    Raises:
        RegistryError: ``classifier_required`` and the classifier cannot be resolved.
    """
    try:
        from llmops.registry import Registry, load_sklearn_model

        registry = registry or Registry()
        model, _ = load_sklearn_model(registry.resolve(cfg.classifier).local_path)
        return fast_scorer(model)
    except Exception as e:
        if cfg.classifier_required:
            raise
        log.warning("injection classifier %s unavailable (%s); using rules only. Train it with "
                    "`llmops classic train-text`.", cfg.classifier, e)
        return None


def fast_scorer(model: Any):
    """text -> probability. For the TF-IDF + logistic-regression pipeline of classic_ml.text this
    skips sklearn's per-call machinery (a few ms per call); anything else goes through predict_proba."""
    import numpy as np
    import pandas as pd
    from scipy.sparse import hstack

    try:
        union = model.named_steps["features"].transformers_[0][1]
        vectorizers = [v for _, v in union.transformer_list]
        lr = model.named_steps["model"]
        coef, bias = lr.coef_.ravel(), float(lr.intercept_[0])

        def score(text: str) -> float:
            x = hstack([v.transform([text]) for v in vectorizers]).tocsr()
            return float(1 / (1 + np.exp(-(x @ coef + bias)[0])))

        score("probe")  # fail here, not in a request, if the shape is not the expected one
        return score
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return lambda text: float(model.predict_proba(pd.DataFrame({"text": [text]}))[0, 1])
