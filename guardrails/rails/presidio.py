"""Presidio's pattern recognisers, offline, for the pii rail (``presidio: auto | required``).

Presidio normally loads a spaCy model from the network; its pattern recognisers (with their
checksums and context words) need only a tokenizer, so the analyzer runs on a blank English spaCy
pipeline, and tldextract (used by its e-mail recogniser) reads its bundled suffix list instead of
fetching one. Entities that our recognisers also find are renamed to ours (EMAIL_ADDRESS -> EMAIL,
...); the others keep Presidio's names (US_PASSPORT, US_BANK_NUMBER, UK_NHS, CRYPTO, ...).
Name-based entities (PERSON, LOCATION) need a trained NER model and are not used.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

RENAME = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CREDIT_CARD", "IBAN_CODE": "IBAN",
          "US_SSN": "US_SSN", "IP_ADDRESS": "IP_ADDRESS"}
EXTRA = ["US_PASSPORT", "US_BANK_NUMBER", "US_DRIVER_LICENSE", "US_ITIN", "UK_NHS", "CRYPTO", "MEDICAL_LICENSE",
         "MAC_ADDRESS"]
_ANALYZER: Any = None
_LOCK = threading.Lock()


def installed() -> bool:
    return importlib.util.find_spec("presidio_analyzer") is not None


def analyzer() -> Any:
    """The shared offline AnalyzerEngine (built on first use, ~1 s).

    Raises:
        ImportError: presidio-analyzer is not installed (``pip install -e '.[presidio]'``).
    """
    global _ANALYZER
    with _LOCK:
        if _ANALYZER is None:
            os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # bundled snapshot, no fetch
            import spacy
            import tldextract.tldextract as tld
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
            from presidio_analyzer.nlp_engine import SpacyNlpEngine

            tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=(), cache_dir=None)

            class BlankSpacy(SpacyNlpEngine):
                def __init__(self) -> None:
                    super().__init__(models=[{"lang_code": "en", "model_name": "blank:en"}])

                def load(self) -> None:
                    self.nlp = {"en": spacy.blank("en")}

            engine = BlankSpacy()
            engine.load()
            registry = RecognizerRegistry()
            registry.load_predefined_recognizers(nlp_engine=engine, languages=["en"])
            _ANALYZER = AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])
        return _ANALYZER


def find(text: str, wanted: set[str] | None, min_score: float) -> list[tuple[str, int, int, float]]:
    """``(entity, start, end, score)`` for Presidio's findings with at least ``min_score``."""
    names = {v: k for k, v in RENAME.items()}
    known = set(RENAME) | set(EXTRA)
    # our own names (API_KEY) mean nothing to Presidio, which raises when it knows none of them
    entities = [n for n in (names.get(e, e) for e in wanted) if n in known] if wanted else [*RENAME, *EXTRA]
    if not entities:
        return []
    results = analyzer().analyze(text, language="en", entities=entities, score_threshold=min_score)
    return [(RENAME.get(r.entity_type, r.entity_type), r.start, r.end, float(r.score)) for r in results]
