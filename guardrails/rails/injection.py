"""Prompt-injection / jailbreak detection: rules on every normalised variant, plus a classifier.

The rules catch the families seen in public jailbreak corpora (instruction override, persona
jailbreaks such as DAN / developer mode, system-prompt extraction, chat-template token smuggling,
safety-bypass requests). The classifier (TF-IDF + logistic regression, trained by
``classic_ml.text`` and registered in the registry) scores what the rules do not name; where it is
unsure, the classifier's embedding stage (a sentence embedding plus its score) decides.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
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
    second_stage: bool = Field(
        True, description="Use the classifier's embedding stage, when its registered version has one, for prompts "
        "scored in [unsure_from, threshold): ~10-40 ms per prompt that reaches it.")
    unsure_from: Threshold = Field(
        0.3, description="Classifier probability from which the embedding stage is consulted (0.3: ~1% of ordinary "
        "prompts reach it; from 0.1, 13% do, for the same held-out recall).")
    second_stage_threshold: Threshold = Field(
        0.9, description="Embedding-stage probability from which it fires (0.9: at most 0.15% of the training "
        "sources' benign rows blocked, cross-validated; benchmarks/results/guardrails.md).")
    classifier_min_words: int = Field(
        1, ge=1, description="Prompts with fewer words are judged by the rules only. 1 (the default): every "
        "prompt goes to the classifier, which learns short ordinary turns from its multilingual chat data.")


class InjectionRail(Rail):
    name: ClassVar[str] = "injection"
    stages: ClassVar[frozenset[str]] = frozenset({"input"})
    cfg: InjectionConfig

    def __init__(self, cfg: InjectionConfig, registry: RegistryAPI | None = None) -> None:
        super().__init__(cfg)
        self.classifier, self.second = load_classifier(cfg, registry) if cfg.classifier else (None, None)
        if self.second is not None:
            self.blocking_io = True  # an embedding takes 10-40 ms: callers on an event loop use a worker thread

    def check(self, text: str, ctx: CheckContext) -> RailResult:
        forms = ctx.forms
        fs = [Finding(self.name, f"rule:{family}", span, 1.0) for family, span in rule_hits(forms)]
        if self.classifier is not None and len(forms[0].split()) >= self.cfg.classifier_min_words:
            p = self.classifier(head_and_tail(forms[0], PROBE_CHARS))
            if p >= self.cfg.threshold:
                fs.append(Finding(self.name, "classifier", None, round(p, 4)))
            elif self.second is not None and not fs and p >= self.cfg.unsure_from:
                q = self.second(forms[0], p)
                if q >= self.cfg.second_stage_threshold:
                    fs.append(Finding(self.name, "classifier:embedding", None, round(q, 4)))
        return RailResult(bool(fs), fs, None, "prompt injection or jailbreak attempt")


def load_classifier(cfg: InjectionConfig, registry: RegistryAPI | None = None) -> tuple[Any, Any]:
    """(text -> probability, (text, probability) -> probability of the embedding stage or None) from the
    registered classifier; (None, None) (rules only) when it cannot be loaded and it is not required.

    Raises:
        RegistryError: ``classifier_required`` and the classifier cannot be resolved, or its embedding stage
            is broken (a stage that cannot load is never silently dropped from a required classifier).
    """
    try:
        from llmops.registry import Registry, load_sklearn_model

        registry = registry or Registry()
        path = Path(registry.resolve(cfg.classifier).local_path)
        model, _ = load_sklearn_model(path)
        second = load_second_stage(path) if cfg.second_stage else None
        return fast_scorer(model), second
    except Exception as e:
        if cfg.classifier_required:
            raise
        log.warning("injection classifier %s unavailable (%s); using rules only. Train it with "
                    "`llmops classic train-text`.", cfg.classifier, e)
        return None, None


def load_second_stage(model_dir: Path) -> Any:
    """(text, first-stage probability) -> probability, from the registered folder's embedding stage; None when
    the version has none.

    Raises:
        RegistryError: the stage file is malformed or does not fit its embedding model.
    """
    import numpy as np

    from llmops.assets import ENCODE_LOCK, sentence_model
    from llmops.errors import RegistryError

    spec_file = model_dir / "second_stage.json"  # written by classic_ml.text (SECOND_STAGE_FILE)
    if not spec_file.is_file():
        return None
    try:
        spec = json.loads(spec_file.read_text())
        coef = np.asarray(spec["coef"], dtype=np.float32)
        bias, scale, chars = float(spec["intercept"]), float(spec["logit_scale"]), int(spec["max_chars"])
        model = sentence_model(str(spec["embedding_model"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RegistryError(f"{spec_file}: not a usable embedding stage ({e}); train the classifier again.") from e
    if coef.shape != (model.get_sentence_embedding_dimension() + 1,):
        raise RegistryError(f"{spec_file}: {coef.shape[0]} weights do not fit {spec['embedding_model']} "
                            f"({model.get_sentence_embedding_dimension()} dimensions + the n-gram score).")
    weights, w_score = coef[:-1], float(coef[-1])

    def score(text: str, p: float) -> float:
        with ENCODE_LOCK:
            vec = model.encode([head_and_tail(text, chars)], normalize_embeddings=True, show_progress_bar=False)[0]
        q = min(max(p, 1e-4), 1 - 1e-4)
        z = float(vec @ weights) + w_score * math.log(q / (1 - q)) / scale + bias
        return 1 / (1 + math.exp(-min(max(z, -50.0), 50.0)))

    score("probe", 0.5)  # fail at load, not in a request
    return score


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
