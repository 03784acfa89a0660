"""Writes the project's context-grounded QA set for LoRA fine-tuning (examples/finetune/context_qa.jsonl).

Every row is a chat in the `messages` format with the exact prompt the RAG pipeline sends: a system rule,
then 2-4 numbered context passages and a question; the assistant answers in one short sentence and cites
the passages it used as [n]. The facts come from a fictional knowledge base (towns, ships, compounds,
software projects, products, people), so a model cannot answer from world knowledge. Row mix: ~15% need
two passages (comparisons, cited as [i][j]), ~12% are unanswerable (the question's entity or attribute is
missing from the context) and get exactly UNKNOWN. The test split uses entities that no train row
mentions, so the eval measures grounding on new names, not memory::

    python examples/finetune/build_context_qa.py
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmops.contracts import CONTEXT_SYSTEM_PROMPT, NO_ANSWER

OUT = Path(__file__).with_name("context_qa.jsonl")
SYSTEM, UNKNOWN = CONTEXT_SYSTEM_PROMPT, NO_ANSWER  # the prompt the RAG pipeline sends (llmops.contracts)
N_ROWS, TEST_SHARE, UNANSWERABLE_SHARE, MULTI_SHARE = 480, 0.15, 0.12, 0.15
TEST_PER_KIND, MAX_USER_CHARS = 3, 700


@dataclass(frozen=True)
class Attr:
    """One attribute of an entity kind: how to draw a value, state it, ask for it and compare it."""

    draw: Callable[[random.Random], int | str]
    facts: tuple[str, ...]  # passage sentences: {S}/{s} subject, {v}/{V} value (capitalised form)
    questions: tuple[str, ...]  # {s} subject
    answer: str  # one sentence without the final period; {S}/{s}, {v}
    compare: tuple[str, ...] = ()  # comparison questions over {a} and {b}
    pick: Callable[..., int] | None = None  # min or max: which value wins the comparison
    compare_answer: str = ""  # {W} winner, {vw}, {l} loser, {vl}
    fmt: Callable[[int | str], str] = str


def _pool(*values: str) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(values)


def _span(lo: int, hi: int, step: int = 1) -> Callable[[random.Random], int]:
    return lambda rng: rng.randrange(lo, hi + 1, step)


NAMES = {
    "town": ["Brindlecombe", "Yarrowmere", "Kestlehaven", "Dunmarrow", "Oskvale", "Threnford", "Pellumby",
             "Varrowick", "Quennisholt", "Morrowfell", "Haldrecott", "Ellsworn", "Tamberlow", "Grisholm",
             "Wendlecross"],
    "ship": ["Halvard Crest", "Mirelle Star", "Orvane Drift", "Saffra Wind", "Tolleck Dawn", "Kessaly Rose",
             "Brenwyn Tide", "Ulvaro Spirit", "Castrel Moon", "Ivenna Gale", "Peloric Dream", "Zandrel Queen",
             "Amberlis Wake", "Feroval Light", "Norrith Pearl"],
    "compound": ["Vornexite", "Selmarine", "Tharnic oxide", "Pellucine", "Ardovane", "Kolbrite", "Myrrhenol",
                 "Zestrane", "Ulcadine", "Brevanite", "Ostrium sulfate", "Calendrine", "Feskorol", "Lumarite",
                 "Quillenate"],
    "software": ["Quillstone", "Brackenwire", "Larkspur Engine", "Moonwright", "Cinderpath", "Foxglint",
                 "Pebblestack", "Driftlock", "Emberlane", "Glassfinch", "Kitewright", "Nettlebrook", "Rookvane",
                 "Saltmarrow", "Thistlecode"],
    "product": ["Corvanta P7", "Bellwick Nova", "Trillux 9", "Ombra Duo", "Pyxon Mini", "Halcyra One", "Druvex S3",
                "Felora Tab", "Quorra Lens", "Nimbrel Go", "Vantique Pro", "Jessamy Hub", "Kobrel Mate",
                "Ulvenna Beam", "Tarrow Band"],
    "person": ["Marisol Quenby", "Aurek Tavistrom", "Lidwine Okafor-Bell", "Casimir Dray", "Noor Elswick",
               "Fenella Ruskin-Ode", "Hollis Varga", "Ysolde Pranter", "Emeric Tallow", "Sunniva Holtby",
               "Idris Felgate", "Rosalind Achterberg", "Bastien Coyle", "Oona Strevell", "Tiberius Lanke"],
}
# How a later sentence of a passage may refer back to the entity; people use their surname.
BACK_REFERENCE = {"town": "the town", "ship": "the ship", "compound": "the compound", "software": "the project",
                  "product": "the device"}

ATTRS: dict[str, dict[str, Attr]] = {
    "town": {
        "founded": Attr(
            _span(1580, 1890),
            ("{S} was founded in {v}.", "Settlers founded {s} in {v}.", "{S} dates from {v}, the year it was founded."),
            ("When was {s} founded?", "In what year was {s} founded?", "What is the founding year of {s}?"),
            "{S} was founded in {v}",
            ("Which town was founded earlier, {a} or {b}?", "Is {a} or {b} the older town?",
             "Of {a} and {b}, which was founded first?"),
            min, "{W} was founded earlier ({vw}) than {l} ({vl})"),
        "region": Attr(
            _pool("the Ostmark Lowlands", "the Vennic Coast", "Harl Province", "the Serrow Hills", "Calder Reach",
                  "the Amberly Downs", "the Fenwold Marshes", "Upper Tressel"),
            ("{S} lies in {v}.", "{S} sits in {v}."),
            ("In which region is {s}?", "Where is {s} located?", "Which region is {s} part of?"),
            "{S} is in {v}"),
        "population": Attr(
            _span(1800, 95000, 100),
            ("{S} has a population of about {v}.", "About {v} people live in {s}."),
            ("What is the population of {s}?", "How many people live in {s}?",
             "Roughly how many residents does {s} have?"),
            "{S} has a population of about {v}",
            ("Which town has more people, {a} or {b}?", "Which is larger by population, {a} or {b}?"),
            max, "{W} has more people ({vw}) than {l} ({vl})", fmt=lambda v: f"{v:,}"),
        "river": Attr(
            _pool("the Ilse", "the Carrow", "the Venn", "the Oddle", "the Tamsin", "the Selk", "the Hollin",
                  "the Mistle", "the Quarr", "the Pennow"),
            ("{S} stands on {v}.", "{V} flows through {s}."),
            ("Which river flows through {s}?", "What river is {s} on?", "On which river does {s} stand?"),
            "{S} stands on {v}"),
        "industry": Attr(
            _pool("salt harvesting", "glassblowing", "wool dyeing", "clockmaking", "slate quarrying",
                  "cheese making", "paper milling", "boatbuilding", "lace weaving", "cider pressing"),
            ("The main industry in {s} is {v}.", "Most jobs in {s} depend on {v}."),
            ("What is the main industry in {s}?", "Which industry dominates {s}?",
             "What do most people in {s} work in?"),
            "The main industry in {s} is {v}"),
    },
    "ship": {
        "launched": Attr(
            _span(1898, 2019),
            ("{S} was launched in {v}.", "{S} first went to sea in {v}."),
            ("When was {s} launched?", "In what year was {s} launched?", "What year did {s} first go to sea?"),
            "{S} was launched in {v}",
            ("Which ship was launched first, {a} or {b}?", "Is {a} or {b} the older ship?"),
            min, "{W} was launched earlier ({vw}) than {l} ({vl})"),
        "port": Attr(
            _pool("Port Esmer", "Caldwick Harbour", "Saltreach", "Gannet Bay", "Port Liraine", "Holloway Quay",
                  "Vessen Harbour", "Marrick Point"),
            ("{S} sails from its home port of {v}.", "{S} is based in {v}.", "The home port of {s} is {v}."),
            ("What is the home port of {s}?", "Where is {s} based?", "Which port does {s} sail from?"),
            "The home port of {s} is {v}"),
        "capacity": Attr(
            _span(120, 2400, 20),
            ("{S} can carry {v}.", "{S} has room for {v}."),
            ("How many passengers can {s} carry?", "What is the passenger capacity of {s}?"),
            "{S} can carry {v}",
            ("Which ship carries more passengers, {a} or {b}?", "Does {a} or {b} have the larger passenger capacity?"),
            max, "{W} carries more passengers ({vw}) than {l} ({vl})", fmt=lambda v: f"{v:,} passengers"),
        "builder": Attr(
            _pool("Renholt Yards", "Saltgrave Shipworks", "Corran and Pike", "the Ebbmouth Yard", "Drumlin Marine",
                  "Westerhay Shipbuilders"),
            ("{S} was built by {v}.", "{V} built {s}."),
            ("Who built {s}?", "Which shipyard built {s}?"),
            "{S} was built by {v}"),
        "hull": Attr(
            _pool("navy blue", "white", "dark green", "red", "grey", "black", "cream", "teal"),
            ("{S} has a {v} hull.", "The hull of {s} is painted {v}."),
            ("What colour is the hull of {s}?", "What colour is {s} painted?"),
            "{S} has a {v} hull"),
        "captain": Attr(
            _pool("Marta Ekwall", "Joren Pask", "Aldo Ferrante", "Sigrun Haldane", "Tobias Wren", "Nell Corrigan",
                  "Baptiste Orrel", "Hana Lindqvist"),
            ("{S} is commanded by Captain {v}.", "Captain {v} commands {s}."),
            ("Who is the captain of {s}?", "Who commands {s}?"),
            "{S} is commanded by Captain {v}"),
    },
    "compound": {
        "discovered": Attr(
            _span(1770, 1995),
            ("{S} was discovered in {v}.", "{S} was first isolated in {v}."),
            ("When was {s} discovered?", "In what year was {s} first isolated?"),
            "{S} was discovered in {v}",
            ("Which compound was discovered first, {a} or {b}?", "Was {a} or {b} discovered earlier?"),
            min, "{W} was discovered earlier ({vw}) than {l} ({vl})"),
        "discoverer": Attr(
            _pool("Agathe Renier", "Wilhelm Strand", "Cora Pemberton", "Dmitri Allov", "Yusuf Kerrane",
                  "Helene Marsh", "Ottavio Benn", "Liesel Dorr"),
            ("{S} was first described by {v}.", "The chemist {v} first described {s}."),
            ("Who first described {s}?", "Which chemist first described {s}?"),
            "{S} was first described by {v}"),
        "colour": Attr(
            _pool("pale green", "deep violet", "bright orange", "colourless", "pale yellow", "rust red", "sky blue",
                  "milky white"),
            ("{S} forms {v} crystals.", "{S} is {v} when pure."),
            ("What colour is {s}?", "What colour are crystals of {s}?"),
            "{S} forms {v} crystals"),
        "melting": Attr(
            _span(40, 1600),
            ("{S} melts at {v}.", "The melting point of {s} is {v}."),
            ("What is the melting point of {s}?", "At what temperature does {s} melt?"),
            "{S} melts at {v}",
            ("Which has the higher melting point, {a} or {b}?", "Does {a} or {b} melt at a higher temperature?"),
            max, "{W} has a higher melting point ({vw}) than {l} ({vl})", fmt=lambda v: f"{v} degrees Celsius"),
        "use": Attr(
            _pool("glass tinting", "battery electrolytes", "textile dyes", "water purification", "lamp filaments",
                  "varnish hardening", "ceramic glazes", "fertiliser coatings"),
            ("{S} is mainly used in {v}.", "Today {s} is used mostly in {v}."),
            ("What is {s} mainly used for?", "What is the main use of {s}?"),
            "{S} is mainly used in {v}"),
    },
    "software": {
        "version": Attr(
            lambda rng: f"{rng.randint(1, 14)}.{rng.randint(0, 12)}",
            ("The latest release of {s} is version {v}.", "{S} is currently at version {v}."),
            ("What is the latest version of {s}?", "Which version of {s} is the newest?"),
            "The latest release of {s} is version {v}"),
        "codename": Attr(
            _pool("Mossback", "Tidewell", "Copperleaf", "Nightjar", "Quarry Owl", "Ember Finch", "Slatefall",
                  "Bramblegate", "Lantern Bay", "Greywhistle"),
            ("The current release of {s} is codenamed {v}.", "The newest release of {s} carries the codename {v}."),
            ("What is the codename of the latest {s} release?", "What codename does the current release of {s} use?"),
            "The latest release of {s} is codenamed {v}"),
        "released": Attr(
            _span(2006, 2023),
            ("{S} was first released in {v}.", "The first public release of {s} came out in {v}."),
            ("When was {s} first released?", "In what year did {s} first come out?"),
            "{S} was first released in {v}",
            ("Which project is older, {a} or {b}?", "Was {a} or {b} released first?"),
            min, "{W} was first released earlier ({vw}) than {l} ({vl})"),
        "language": Attr(
            _pool("Rust", "Go", "OCaml", "Python", "Zig", "Elixir", "C++", "Kotlin", "Haskell", "TypeScript"),
            ("{S} is written in {v}.", "The codebase of {s} is written in {v}."),
            ("What programming language is {s} written in?", "Which language is {s} implemented in?"),
            "{S} is written in {v}"),
        "maintainer": Attr(
            _pool("the Brightwater Collective", "Ostler Labs", "the Fernhill Foundation", "Quaymark Software",
                  "the Tollgate Group", "Hearthline Systems"),
            ("{S} is maintained by {v}.", "{V} maintains {s}."),
            ("Who maintains {s}?", "Which group maintains {s}?"),
            "{S} is maintained by {v}"),
        "licence": Attr(
            _pool("MIT", "Apache 2.0", "BSD 3-Clause", "MPL 2.0", "GPL 3.0", "LGPL 2.1", "ISC"),
            ("{S} is distributed under the {v} licence.", "{S} uses the {v} licence."),
            ("Under which licence is {s} distributed?", "What licence does {s} use?"),
            "{S} is distributed under the {v} licence"),
    },
    "product": {
        "kind": Attr(
            _pool("a handheld label printer", "a solar lantern", "a pocket weather station", "an e-ink notebook",
                  "a travel kettle", "a bike computer", "a smart plant sensor", "a noise-cancelling headset",
                  "a camping stove", "a portable projector", "a digital loupe", "an air quality monitor"),
            ("{S} is {v}.", "{S} is sold as {v}."),
            ("What kind of device is {s}?", "What type of product is {s}?", "What is {s}?"),
            "{S} is {v}"),
        "maker": Attr(
            _pool("Lorrin Works", "Calloway and Dyce", "Ferrowind", "Nesbury Instruments", "Pellam Goods",
                  "Otterline", "Brightmoor Labs", "Tansy Electric"),
            ("{S} is made by {v}.", "{V} manufactures {s}."),
            ("Who makes {s}?", "Which company manufactures {s}?"),
            "{S} is made by {v}"),
        "launched": Attr(
            _span(2009, 2024),
            ("{S} went on sale in {v}.", "{S} reached the shops in {v}."),
            ("When did {s} go on sale?", "In what year was {s} launched?"),
            "{S} went on sale in {v}",
            ("Which came out first, {a} or {b}?", "Was {a} or {b} launched earlier?"),
            min, "{W} went on sale earlier ({vw}) than {l} ({vl})"),
        "price": Attr(
            _span(29, 1299, 10),
            ("{S} costs {v}.", "{S} retails for {v}."),
            ("How much does {s} cost?", "What is the price of {s}?"),
            "{S} costs {v}",
            ("Which is cheaper, {a} or {b}?", "Does {a} or {b} cost less?"),
            min, "{W} is cheaper ({vw}) than {l} ({vl})", fmt=lambda v: f"${v}"),
        "weight": Attr(
            _span(80, 2400, 10),
            ("{S} weighs {v}.", "{S} has a weight of {v}."),
            ("How much does {s} weigh?", "What is the weight of {s}?"),
            "{S} weighs {v}",
            ("Which is lighter, {a} or {b}?", "Does {a} or {b} weigh less?"),
            min, "{W} is lighter ({vw}) than {l} ({vl})", fmt=lambda v: f"{v:,} grams"),
        "colour": Attr(
            _pool("matte black", "sage green", "coral red", "slate grey", "ivory", "ocean blue", "mustard yellow"),
            ("{S} comes in {v}.", "{S} is sold in a {v} finish."),
            ("What colour is {s}?", "What colour does {s} come in?"),
            "{S} comes in {v}"),
    },
    "person": {
        "role": Attr(
            _pool("a harbour pilot", "an archivist", "a glaciologist", "a violist", "a master brewer",
                  "a lighthouse engineer", "a museum curator", "a seed librarian", "a bridge inspector",
                  "an orchard keeper"),
            ("{S} works as {v}.", "{S} has long worked as {v}."),
            ("What is the job of {s}?", "What does {s} do for a living?", "What is the role of {s}?"),
            "{S} works as {v}"),
        "employer": Attr(
            _pool("the Merrow Institute", "the Calder Survey Office", "the Ostwin Observatory", "the Harlan Seed Bank",
                  "the Vennic Maritime Museum", "the Pelling Glassworks", "the Ardley Conservatory"),
            ("{S} is employed by {v}.", "{V} employs {s}."),
            ("Where does {s} work?", "Which organisation employs {s}?"),
            "{S} is employed by {v}"),
        "born": Attr(
            _span(1931, 1996),
            ("{S} was born in {v}.", "Records give {v} as the birth year of {s}."),
            ("When was {s} born?", "In what year was {s} born?"),
            "{S} was born in {v}",
            ("Who is older, {a} or {b}?", "Which of {a} and {b} was born first?"),
            min, "{W} was born earlier ({vw}) than {l} ({vl})"),
        "hometown": Attr(
            _pool("Lowenby", "Crickmoor", "Ashwell Green", "Tarnside", "Penwarrow", "Rookby", "Fallowmere",
                  "Sedgecombe"),
            ("{S} grew up in {v}.", "{S} comes from {v}."),
            ("Where did {s} grow up?", "What is the hometown of {s}?"),
            "{S} grew up in {v}"),
        "known_for": Attr(
            _pool("mapping the Lindow sea caves", "restoring the Averly tide clock", "a survey of coastal lichens",
                  "breeding frost-hardy pears", "cataloguing ten thousand shipping logs",
                  "designing a folding footbridge", "recording the songs of marsh wrens", "reviving a lost blue glaze"),
            ("{S} is best known for {v}.", "{S} became widely known for {v}."),
            ("What is {s} best known for?", "What is {s} famous for?"),
            "{S} is best known for {v}"),
    },
}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def make_entities(rng: random.Random) -> list[dict]:
    """Draws every entity's attribute values and assigns TEST_PER_KIND entities per kind to the test split."""
    entities = []
    for kind, names in NAMES.items():
        test = set(rng.sample(names, TEST_PER_KIND))
        for name in names:
            subject = f"the {name}" if kind == "ship" else name
            values = {attr: spec.draw(rng) for attr, spec in ATTRS[kind].items()}
            entities.append({"name": name, "kind": kind, "s": subject, "values": values,
                             "split": "test" if name in test else "train"})
    return entities


def fact(ent: dict, attr: str, rng: random.Random, first: bool) -> str:
    """One passage sentence stating `attr`; later sentences sometimes refer back instead of naming."""
    spec = ATTRS[ent["kind"]][attr]
    subject = ent["s"]
    if not first and rng.random() < 0.5:
        subject = BACK_REFERENCE.get(ent["kind"]) or ent["name"].split()[-1]
    value = spec.fmt(ent["values"][attr])
    return rng.choice(spec.facts).format(S=_cap(subject), s=subject, v=value, V=_cap(value))


def passage(ent: dict, must: list[str], rng: random.Random, extra: int, avoid: str | None = None) -> str:
    """A 1-3 sentence passage about `ent` stating the `must` attributes plus up to `extra` others."""
    others = [a for a in ATTRS[ent["kind"]] if a not in must and a != avoid]
    attrs = must + rng.sample(others, min(extra, len(others)))
    rng.shuffle(attrs)
    return " ".join(fact(ent, a, rng, first=i == 0) for i, a in enumerate(attrs[:3]))


def answer_sentence(ent: dict, attr: str) -> str:
    spec = ATTRS[ent["kind"]][attr]
    return spec.answer.format(S=_cap(ent["s"]), s=ent["s"], v=spec.fmt(ent["values"][attr]))


def distractors(pool: list[dict], exclude: list[dict], n: int, kind: str, attr: str | None,
                rng: random.Random) -> list[str]:
    """Passages about other entities; mostly the same kind, often stating the asked attribute (hard negatives)."""
    names = {e["name"] for e in exclude}
    same = [e for e in pool if e["kind"] == kind and e["name"] not in names]
    other = [e for e in pool if e["kind"] != kind and e["name"] not in names]
    out = []
    for _ in range(n):
        source = same if same and rng.random() < 0.65 else other
        ent = source.pop(rng.randrange(len(source)))
        must = [attr] if attr in ATTRS[ent["kind"]] and rng.random() < 0.5 else []
        out.append(passage(ent, must, rng, extra=rng.randint(1, 2) - len(must)))
    return out


def user_prompt(contexts: list[str], question: str) -> str:
    numbered = "\n".join(f"[{i}] {text}" for i, text in enumerate(contexts, 1))
    return f"Context:\n{numbered}\n\nQuestion: {question}"


def single_row(ent: dict, attr: str, pool: list[dict], rng: random.Random) -> dict:
    spec = ATTRS[ent["kind"]][attr]
    relevant = passage(ent, [attr], rng, extra=rng.randint(0, 2))
    contexts = distractors(pool, [ent], rng.randint(1, 3), ent["kind"], attr, rng)
    at = rng.randint(0, len(contexts))
    contexts.insert(at, relevant)
    question = rng.choice(spec.questions).format(s=ent["s"])
    return _row(contexts, question, f"{answer_sentence(ent, attr)} [{at + 1}].", [at + 1])


def multi_row(a: dict, b: dict, attr: str, pool: list[dict], rng: random.Random) -> dict:
    spec = ATTRS[a["kind"]][attr]
    contexts = distractors(pool, [a, b], rng.randint(0, 2), a["kind"], attr, rng)
    slots = sorted(rng.sample(range(len(contexts) + 2), 2))
    for slot, ent in zip(slots, rng.sample([a, b], 2), strict=True):
        contexts.insert(slot, passage(ent, [attr], rng, extra=rng.randint(0, 1)))
    won = spec.pick(a["values"][attr], b["values"][attr])
    win, lose = (a, b) if won == a["values"][attr] else (b, a)
    question = rng.choice(spec.compare).format(a=a["s"], b=b["s"])
    text = spec.compare_answer.format(W=_cap(win["s"]), vw=spec.fmt(win["values"][attr]), l=lose["s"],
                                      vl=spec.fmt(lose["values"][attr]))
    cited = [s + 1 for s in slots]
    return _row(contexts, question, f"{text} {''.join(f'[{c}]' for c in cited)}.", cited)


def unanswerable_row(ent: dict, attr: str, pool: list[dict], rng: random.Random) -> dict:
    """Either the entity is present without the asked attribute, or it is absent while others state it."""
    spec = ATTRS[ent["kind"]][attr]
    if rng.random() < 0.5:
        contexts = distractors(pool, [ent], rng.randint(1, 3), ent["kind"], attr, rng)
        contexts.insert(rng.randint(0, len(contexts)), passage(ent, [], rng, extra=rng.randint(1, 2), avoid=attr))
    else:
        contexts = distractors(pool, [ent], rng.randint(2, 4), ent["kind"], attr, rng)
    question = rng.choice(spec.questions).format(s=ent["s"])
    return _row(contexts, question, UNKNOWN, [])


def _row(contexts: list[str], question: str, answer: str, cited: list[int]) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": user_prompt(contexts, question)},
                         {"role": "assistant", "content": answer}],
            "answerable": answer != UNKNOWN, "reference": answer, "cited": cited, "question": question,
            "contexts": contexts}


def build_split(entities: list[dict], split: str, n: int, rng: random.Random) -> list[dict]:
    """n rows whose question, answer and distractors all use entities of `split` only."""
    pool = [e for e in entities if e["split"] == split]
    pairs = [(e, a) for e in pool for a in ATTRS[e["kind"]]]
    comparable = [(e, f, a) for i, e in enumerate(pool) for f in pool[i + 1:] if e["kind"] == f["kind"]
                  for a, spec in ATTRS[e["kind"]].items() if spec.compare and e["values"][a] != f["values"][a]]
    n_unknown, n_multi = round(n * UNANSWERABLE_SHARE), round(n * MULTI_SHARE)
    plan = ["unknown"] * n_unknown + ["multi"] * n_multi + ["single"] * (n - n_unknown - n_multi)
    rows, seen, queue = [], set(), []
    for how in plan:
        for _ in range(100):  # redraw until the prompt is new and short enough
            if how == "single":
                if not queue:  # walk all (entity, attribute) pairs before repeating one
                    queue = rng.sample(pairs, len(pairs))
                row = single_row(*queue.pop(), pool, rng)
            elif how == "multi":
                row = multi_row(*rng.choice(comparable), pool, rng)
            else:
                row = unanswerable_row(*rng.choice(pairs), pool, rng)
            user = row["messages"][1]["content"]
            if user not in seen and len(user) <= MAX_USER_CHARS:
                break
        else:
            raise RuntimeError(f"could not draw a new {how} row under {MAX_USER_CHARS} chars; raise the limit")
        seen.add(user)
        rows.append({**row, "split": split})
    return rows


def check(rows: list[dict], entities: list[dict]) -> None:
    """Fails loudly if a test entity leaks into train rows or a prompt breaks the format limits."""
    train_text = "\n".join(json.dumps(r).lower() for r in rows if r["split"] == "train")
    leaked = [e["name"] for e in entities if e["split"] == "test" and e["name"].lower() in train_text]
    if leaked:
        raise ValueError(f"test entities appear in train rows: {leaked}")
    for r in rows:
        user = r["messages"][1]["content"]
        if len(user) > MAX_USER_CHARS or not user.isascii():
            raise ValueError(f"user prompt too long or not ASCII: {user!r}")


def build(seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    entities = make_entities(rng)
    n_test = round(N_ROWS * TEST_SHARE)
    rows = build_split(entities, "train", N_ROWS - n_test, rng) + build_split(entities, "test", n_test, rng)
    rng.shuffle(rows)
    check(rows, entities)
    return [{k: r[k] for k in ("messages", "split", "answerable", "reference", "cited", "question", "contexts")}
            for r in rows]


if __name__ == "__main__":
    data = build()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
    counts = {(s, kind): sum(1 for r in data if r["split"] == s and
                             (("unknown" if not r["answerable"] else "multi" if len(r["cited"]) > 1 else "single")
                              == kind))
              for s in ("train", "test") for kind in ("single", "multi", "unknown")}
    print(f"wrote {OUT} ({len(data)} rows): {counts}")
