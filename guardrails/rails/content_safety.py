"""Content safety: harmful requests and harmful or toxic answers, named by category, on both sides.

The taxonomy is :data:`guardrails.datasets.safety.CATEGORIES` (violence, self_harm, sexual, hate, crime,
privacy, toxicity). Two signals name a category:

- a classifier (hashed n-grams + multinomial logistic regression, ``classic_ml.text``) that the project
  trains on public labelled material (``llmops guardrails data --set safety``) and registers as
  ``content-safety-classifier``. It fires when the probability that a text belongs to a category that is
  not allowed reaches ``threshold``; the category is the likeliest of those;
- a lexicon for toxicity: abuse and profanity that never belong in an assistant's answer, and insults
  addressed to someone ("you ... idiot", "go die"), on the normalised text (leetspeak and look-alike
  letters undone).

An answer (or an assistant turn of the history) that opens by declining ("I'm sorry, but I can't help with
...") is classified on what follows its first sentence only: refusals name what they refuse. Pieces of a
stream get the lexicon only; the classifier judges the whole answer at its end. Each category has its own action (``block``, ``warn`` or ``allow``), also per model and per key through
the policy's overrides. Retrieved passages (RAG context) are not judged here: a document may describe what
a request may not ask for; the answer is judged on the output side.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from guardrails.datasets.safety import CATEGORIES, SAFE, check_categories
from guardrails.rails.base import BaseRailConfig, CheckContext, Rail, RailResult, Threshold
from guardrails.rails.injection import PROBE_CHARS  # read as the injection rail reads a long text
from guardrails.verdict import Finding
from llmops.contracts import RegistryAPI
from llmops.textnorm import HOMOGLYPHS, LEET, LEETISH, head_and_tail

log = logging.getLogger(__name__)
CategoryAction = Literal["block", "warn", "allow"]

# Slurs, and abuse aimed at someone: toxic on both sides. Profanity: toxic in an assistant's answer only (a user
# who swears at a failing regex is not abusing anyone). Idioms that contain such words ("a chink in the armour",
# "Spic and Span", "drop dead gorgeous", "shut up and dance") are left out on purpose.
_SLURS = r"faggots?|nigg(?:er|a)s?|kikes?|retards?"
_PROFANITY = (r"fuck(?:ing|er|ers|ed)?|motherfuck(?:er|ers|ing)?|cunts?|bitch(?:es)?|assholes?|dickheads?|twats?|"
              r"wankers?|bastards?|retarded|sluts?|whores?|piss off|go to hell")
_ABUSE = r"kill yourself|kys|go (?:and )?die|i (?:hate|despise|loathe) you"
# insults that name a person: "you are a worthless idiot", "you stupid moron", "you're so dumb", "ur an idiot"
_INSULT = (r"idiots?|morons?|stupid|dumb(?:ass)?|imbeciles?|worthless|pathetic|losers?|jackass|cretins?|halfwits?|"
           r"dimwits?")
_ADDRESSED = (rf"\b(?:you|you're|youre|you are|ur|u r|u)\b(?:\s+(?:are|r|such|so|a|an|the|most|really|complete|"
              rf"total|fucking|little|big)){{0,4}}\s+(?:{_INSULT})\b")
_TOXIC = {
    "input": [re.compile(rf"\b(?:{_SLURS}|{_ABUSE})\b", re.I), re.compile(_ADDRESSED, re.I)],
    "output": [re.compile(rf"\b(?:{_SLURS}|{_ABUSE}|{_PROFANITY})\b", re.I), re.compile(_ADDRESSED, re.I)],
}


# A refusal names the topic it refuses ("I'm sorry, but I can't help with making explosives."): an answer (or an
# assistant turn in the history) that opens with one is classified on what follows its first sentence only.
_REFUSAL = re.compile(r"^\W*(?:(?:I['’]?m|I am) sorry,?\s+(?:but\s+)?)?I\s*(?:can(?:no|['’])t|cannot|won['’]?t|"
                      r"will not|['’]?m not able to|am not able to|['’]?m unable to|am unable to|must decline to)\s+"
                      r"(?:help|assist|provide|do|create|write|give|share|comply|support|generate|fulfil|fulfill|"
                      r"answer|explain|describe|engage)\b", re.I)
_FIRST_SENTENCE = re.compile(r"[.!?](?:\s|$)")


def after_refusal(text: str) -> str | None:
    """``None`` when ``text`` does not open with a refusal; else what follows its first sentence."""
    if not _REFUSAL.search(text[:200]):
        return None
    end = _FIRST_SENTENCE.search(text)
    return text[end.end():].strip() if end else ""


def toxic_spans(forms: list[str], stage: str = "output") -> list[str]:
    """The toxic phrases the lexicon finds in the normalised text (``forms[0]``), its look-alike letters folded
    and its leetspeak undone (rot13 and reversed forms, which only add noise here, are not read). On the input
    side profanity alone is not toxicity: slurs and abuse aimed at someone are."""
    base = forms[0]
    texts = [base, base.translate(HOMOGLYPHS)]
    if LEETISH.search(base):
        texts.append(base.lower().translate(LEET))
    found = []
    for text in dict.fromkeys(texts):
        for rx in _TOXIC["input" if stage == "input" else "output"]:
            found += [m.group().lower() for m in rx.finditer(text)]
    return sorted(set(found))


class ContentSafetyConfig(BaseRailConfig):
    """Harmful requests and harmful or toxic answers, by category (the classifier plus the toxicity lexicon)."""

    rail: Literal["content_safety"] = Field(description="This rail.")
    classifier: str | None = Field(
        None, description="Registry ref of the content-safety classifier (e.g. content-safety-classifier@champion).")
    classifier_required: bool = Field(
        False, description="Fail loading when the classifier cannot be resolved (else the lexicon only).")
    threshold: Threshold = Field(0.5, description="Probability that a text is not 'safe' from which it fires.")
    categories: dict[str, CategoryAction] = Field(
        default_factory=dict, description="Action per category (violence, self_harm, sexual, hate, crime, privacy, "
        "toxicity); a category not listed takes the rail's action. allow: not flagged at all.")
    lexicon: bool = Field(True, description="Toxic phrases and insults addressed to someone name 'toxicity'.")

    _known = field_validator("categories")(classmethod(lambda cls, v: check_categories(v)))


class ContentSafetyRail(Rail):
    name: ClassVar[str] = "content_safety"
    judges_passages: ClassVar[bool] = False
    cfg: ContentSafetyConfig

    def __init__(self, cfg: ContentSafetyConfig, registry: RegistryAPI | None = None) -> None:
        super().__init__(cfg)
        self.scorer = load_scorer(cfg, registry) if cfg.classifier else None
        self.actions = {c: cfg.categories.get(c, cfg.action) for c in CATEGORIES}

    def with_categories(self, overrides: dict[str, str]) -> ContentSafetyRail:
        """The same rail (and classifier) with some categories' actions changed (per model / per key)."""
        view = ContentSafetyRail.__new__(ContentSafetyRail)
        view.cfg, view.scorer = self.cfg, self.scorer
        view.actions = {**self.actions, **{c: a for c, a in overrides.items() if c in CATEGORIES}}
        return view

    def scores(self, text: str) -> dict[str, float]:
        """Probability per class (``safe`` and each category); empty without a classifier."""
        return self.scorer(head_and_tail(text, PROBE_CHARS)) if self.scorer is not None else {}

    def check(self, text: str, ctx: CheckContext) -> RailResult:
        found: dict[str, Finding] = {}
        if self.cfg.lexicon and self.actions["toxicity"] != "allow":
            hits = toxic_spans(ctx.forms, ctx.stage)
            if hits:
                found["toxicity"] = Finding(self.name, "toxicity", None, 1.0)
        judged = ctx.forms[0]
        if ctx.stage == "output" or ctx.role == "assistant":  # the model's words: a refusal names its topic
            rest = after_refusal(judged)
            judged = judged if rest is None else rest
        # pieces of a stream get the lexicon only: the classifier judges the whole answer when it ends (it
        # needs the whole text, and a few ms per chunk of every stream would load the gateway's event loop)
        probs = self.scores(judged) if judged.strip() and not ctx.partial else {}
        if probs:  # an allowed category counts as safe: its probability does not make a text unsafe
            ranked = sorted(((p, c) for c, p in probs.items() if c != SAFE and self.actions.get(c) != "allow"),
                            reverse=True)
            unsafe = sum(p for p, _ in ranked)
            if ranked and unsafe >= self.cfg.threshold and ranked[0][1] not in found:
                found[ranked[0][1]] = Finding(self.name, ranked[0][1], None, round(unsafe, 4))
        found = {c: f for c, f in found.items() if self.actions.get(c, "block") != "allow"}
        if not found:
            return RailResult(False)
        order = {"block": 2, "warn": 1}
        worst = max(found, key=lambda c: order[self.actions[c]])
        what = "request" if ctx.stage == "input" else "content"
        return RailResult(True, list(found.values()), None, f"harmful {what}: {', '.join(sorted(found))}",
                          action=self.actions[worst])


def load_scorer(cfg: ContentSafetyConfig, registry: RegistryAPI | None = None) -> Any:
    """text -> {class: probability} from the registered classifier, or None (lexicon only) when it cannot
    be loaded and it is not required.

    Raises:
        RegistryError: ``classifier_required`` and the classifier cannot be resolved.
    """
    try:
        from llmops.registry import Registry, load_sklearn_model

        registry = registry or Registry()
        model, _ = load_sklearn_model(registry.resolve(cfg.classifier).local_path)
        classes = {str(c) for c in getattr(model, "classes_", [])}
        if SAFE not in classes or not classes - {SAFE} <= set(CATEGORIES):
            raise ValueError(f"{cfg.classifier} predicts {sorted(classes)}, not '{SAFE}' and categories of the "
                             f"taxonomy {sorted(CATEGORIES)} (is it the content-safety classifier?)")
        return multiclass_scorer(model)
    except Exception as e:
        if cfg.classifier_required:
            raise
        log.warning("content-safety classifier %s unavailable (%s); using the toxicity lexicon only. Train it with "
                    "`llmops guardrails data --set safety` and `llmops classic train-text --config "
                    "configs/classic/safety.yaml`.", cfg.classifier, e)
        return None


def multiclass_scorer(model: Any):
    """text -> {class: probability}. For the hashed n-gram + logistic-regression pipeline of classic_ml.text
    this skips sklearn's per-call machinery (a few ms per call); anything else goes through predict_proba."""
    import numpy as np
    import pandas as pd
    from scipy.sparse import hstack

    classes = [str(c) for c in model.classes_]
    try:
        union = model.named_steps["features"].transformers_[0][1]
        vectorizers = [v for _, v in union.transformer_list]
        lr = model.named_steps["model"]
        coef, bias = lr.coef_.T.copy(), lr.intercept_
        if coef.shape[1] != len(classes):
            raise ValueError("not a multinomial model")

        def score(text: str) -> dict[str, float]:
            x = hstack([v.transform([text]) for v in vectorizers]).tocsr()
            z = np.asarray(x @ coef).ravel() + bias
            e = np.exp(z - z.max())
            return dict(zip(classes, (e / e.sum()).tolist(), strict=True))

        score("probe")  # fail here, not in a request, if the shape is not the expected one
        return score
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        def slow(text: str) -> dict[str, float]:
            p = model.predict_proba(pd.DataFrame({"text": [text]}))[0]
            return dict(zip(classes, p.tolist(), strict=True))
        return slow
