"""Prompt-injection / jailbreak detection: rules on every normalised variant, plus a classifier.

The rules catch the families seen in public jailbreak corpora (instruction override, persona
jailbreaks such as DAN / developer mode, system-prompt extraction, chat-template token smuggling,
safety-bypass requests). The classifier (TF-IDF + logistic regression, trained by
``classic_ml.text`` and registered in the registry) scores what the rules do not name; where it is
unsure, the classifier's embedding stage (a sentence embedding plus its score) decides.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from guardrails.rails.base import OPERATOR_ROLES, BaseRailConfig, CheckContext, Rail, RailResult, Threshold
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


VECTOR_CACHE = 2048  # embeddings of recent texts the stage keeps (~3 MB)
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
        0.9, description="Embedding-stage probability from which it fires (0.9: chosen on the training sources' "
        "cross-validated scores, not on the held-out ones; benchmarks/results/guardrails.md).")
    second_stage_skip_roles: list[str] = Field(
        default_factory=lambda: sorted(OPERATOR_ROLES), description="Message roles the embedding stage does not "
        "judge: system and developer prompts are instructions by design, and instructions are what the stage learned "
        "to flag (a RAG system prompt scored 0.95). Rules and n-grams judge them as every other text. The role is "
        "the client's word: where keys are held by untrusted parties, set [] (and accept the false positives).")
    classifier_min_words: int = Field(
        1, ge=1, description="Prompts with fewer words are judged by the rules only. 1 (the default): every "
        "prompt goes to the classifier, which learns short ordinary turns from its multilingual chat data.")

    @model_validator(mode="after")
    def _band(self) -> InjectionConfig:
        if self.classifier and self.second_stage and self.unsure_from > self.threshold:
            raise ValueError(f"unsure_from ({self.unsure_from}) must not exceed threshold ({self.threshold}): the "
                             "embedding stage judges the scores between them")
        return self


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
            elif (self.second is not None and not fs and p >= self.cfg.unsure_from
                  and ctx.role not in self.cfg.second_stage_skip_roles):
                q = self.second(forms[0], p)
                if q >= self.cfg.second_stage_threshold:
                    fs.append(Finding(self.name, "classifier:embedding", None, round(q, 4)))
        return RailResult(bool(fs), fs, None, "prompt injection or jailbreak attempt")


def load_classifier(cfg: InjectionConfig, registry: RegistryAPI | None = None) -> tuple[Any, Any]:
    """(text -> probability, (text, probability) -> probability of the embedding stage or None) from the
    registered classifier. When it is not required, a classifier that cannot be loaded gives (None, None)
    (rules only) and an embedding stage that cannot be loaded gives (n-grams, None); both are logged.

    Raises:
        RegistryError: ``classifier_required`` and the classifier cannot be resolved, or its embedding stage
            is broken (a required classifier never silently loses its stage).
    """
    from llmops.errors import RegistryError

    try:
        from llmops.registry import Registry, load_sklearn_model

        registry = registry or Registry()
        path = Path(registry.resolve(cfg.classifier).local_path)
        scorer = fast_scorer(load_sklearn_model(path)[0])
    except Exception as e:
        if cfg.classifier_required:
            raise
        log.warning("injection classifier %s unavailable (%s); using rules only. Train it with "
                    "`llmops classic train-text`.", cfg.classifier, e)
        return None, None
    if not cfg.second_stage:
        return scorer, None
    try:
        return scorer, load_second_stage(path)
    except Exception as e:
        if cfg.classifier_required:
            if isinstance(e, RegistryError):
                raise
            raise RegistryError(f"{cfg.classifier}: its embedding stage cannot be loaded ({e}).") from e
        log.warning("the embedding stage of %s is unavailable (%s); using rules and n-grams only. Run `make "
                    "assets` (it needs the prepared embedding model) or set second_stage: false.", cfg.classifier, e)
        return scorer, None


def load_second_stage(model_dir: Path) -> Any:
    """(text, first-stage probability) -> probability, from the registered folder's embedding stage; None when
    the version has none.

    Raises:
        RegistryError: the stage file is malformed, or its embedding model is not the prepared one it was
            trained with (manifest sha256), or does not fit its weights.
    """
    import pydantic

    from llmops.assets import ENCODE_LOCK, prepared_model, sentence_model
    from llmops.contracts import SECOND_STAGE_FILE, EmbeddingStageSpec
    from llmops.errors import AssetError, RegistryError

    spec_file = model_dir / SECOND_STAGE_FILE
    if not spec_file.is_file():
        return None
    try:
        spec = EmbeddingStageSpec.model_validate_json(spec_file.read_bytes())
    except (OSError, pydantic.ValidationError) as e:
        raise RegistryError(f"{spec_file}: not a usable embedding stage ({e}); train the classifier again.") from e
    try:
        _, sha = prepared_model(spec.embedding_model)
    except AssetError as e:
        raise RegistryError(f"{spec_file}: {e}") from e
    if sha != spec.model_sha256:
        raise RegistryError(f"{spec_file}: trained with another {spec.embedding_model} (manifest sha256 "
                            f"{spec.model_sha256[:12]}, prepared here {sha[:12]}); train the classifier again.")
    model = sentence_model(spec.embedding_model)
    dim = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
    if dim != spec.dimension:
        raise RegistryError(f"{spec_file}: {spec.dimension} weights do not fit {spec.embedding_model} "
                            f"({dim} dimensions).")

    # the same texts come back (a RAG corpus's passages, a conversation's history, a retried request): their
    # embeddings are kept, so each distinct text costs one encode while it stays among the last VECTOR_CACHE
    seen: OrderedDict[bytes, Any] = OrderedDict()
    seen_lock = threading.Lock()

    def score(text: str, p: float) -> float:
        probe = head_and_tail(text, spec.max_chars)
        key = hashlib.blake2b(probe.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with seen_lock:  # a hit does not wait behind another thread's encode
            vec = seen.get(key)
            if vec is not None:
                seen.move_to_end(key)
        if vec is None:
            with ENCODE_LOCK:
                vec = model.encode([probe], normalize_embeddings=True, show_progress_bar=False)[0]
            with seen_lock:
                seen[key] = vec
                if len(seen) > VECTOR_CACHE:
                    seen.popitem(last=False)
        return spec.score(vec, p)

    if not 0 <= score("probe", 0.5) <= 1:  # fail at load, not in a request
        raise RegistryError(f"{spec_file}: the stage does not give a probability.")
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
