"""PII and secret recognisers with validation (Luhn, IBAN mod-97, SSN rules) and redaction.

Each recogniser is a regex plus an optional validator, so "4111 1111 1111 1111" is a card and
"1234 5678 9012 3456" is not. Entities: EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS,
API_KEY (well-known key formats, private keys, JWTs, `secret=...` assignments).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from guardrails.rails import presidio
from guardrails.rails.base import BaseRailConfig, CheckContext, Rail, RailResult
from guardrails.verdict import Finding


@dataclass(frozen=True)
class Match:
    entity: str
    start: int
    end: int
    score: float


def luhn(number: str) -> bool:
    digits = [int(d) for d in re.sub(r"\D", "", number)]
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return total % 10 == 0


IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27,
    "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24,
    "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def iban_ok(value: str) -> bool:
    s = re.sub(r"[\s-]", "", value).upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def ssn_ok(value: str) -> bool:
    d = re.sub(r"\D", "", value)
    area, group, serial = d[:3], d[3:5], d[5:]
    if len(d) != 9 or area in ("000", "666") or area.startswith("9") or group == "00" or serial == "0000":
        return False
    return d != "078051120"  # the famous advertising-sample SSN


def ip_ok(value: str) -> bool:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return False
    # "::" or "1::" alone are valid addresses but far more often code or times
    return addr.version == 4 or sum(ch.isalnum() for ch in value) >= 6


def phone_ok(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    if not 7 <= len(digits) <= 15 or len(set(digits)) <= 2:
        return False
    # dates and number ranges look like phone numbers; require a phone-like shape
    return value.strip().startswith(("+", "(")) or len(digits) >= 10


def entropy_ok(value: str) -> bool:
    secret = re.split(r"[:=]\s*", value, maxsplit=1)[-1].strip("'\" ")
    return len(secret) >= 12 and len(set(secret)) >= 8 and any(c.isdigit() for c in secret)


Recognizer = tuple[str, re.Pattern, Callable[[str], bool] | None, float]

RECOGNIZERS: list[Recognizer] = [
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"), None, 0.95),
    ("CREDIT_CARD", re.compile(r"\b(?:\d[ \-]?){12,18}\d\b"), luhn, 0.9),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?:[ \-]?[A-Z0-9]{4}){2,7}(?:[ \-]?[A-Z0-9]{1,4})?\b"), iban_ok, 0.95),
    ("US_SSN", re.compile(r"\b\d{3}[- ]\d{2}[- ]\d{4}\b|\b(?<![\d-])\d{9}(?![\d-])\b"), ssn_ok, 0.8),
    ("IP_ADDRESS", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])"),
     ip_ok, 0.8),
    ("PHONE", re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{1,4}\)[\s.\-]?)?\d{2,4}(?:[\s.\-]?\d{2,4}){1,4}"
                         r"(?![\w])"), phone_ok, 0.7),
    ("API_KEY", re.compile(
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"                       # AWS access key id
        r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b"                     # GitHub tokens
        r"|\bgithub_pat_[A-Za-z0-9_]{22,}\b"
        r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}\b"          # OpenAI / Anthropic style
        r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}\b"                 # Slack
        r"|\bAIza[0-9A-Za-z_\-]{35}\b"                         # Google API key
        r"|\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}\b"    # Stripe
        r"|\bglpat-[0-9A-Za-z_\-]{20}\b"                       # GitLab
        r"|\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"  # JWT
        r"|-----BEGIN (?:RSA |EC |OPENSSH |DSA |PGP )?PRIVATE KEY-----"),
     None, 0.95),
    ("API_KEY", re.compile(r"(?i)\b(?:api[_-]?key|secret|token|password|passwd|access[_-]?key)\s*[:=]\s*"
                           r"['\"]?[^\s'\"]{8,}"), entropy_ok, 0.75),
]
ENTITIES = sorted({r[0] for r in RECOGNIZERS})
NEEDS_DIGITS = {"CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS", "PHONE"}


def find(text: str, entities: set[str] | None = None) -> list[Match]:
    """Non-overlapping validated matches, earliest and most specific first."""
    found: list[Match] = []
    has_digit = any(ch.isdigit() for ch in text)
    has_at = "@" in text
    for entity, pattern, validate, score in RECOGNIZERS:
        if entities is not None and entity not in entities:
            continue
        if (entity in NEEDS_DIGITS and not has_digit) or (entity == "EMAIL" and not has_at):
            continue  # cheap pre-checks: most text has no digits or no '@
        for m in pattern.finditer(text):
            value = m.group()
            if validate is None or validate(value):
                found.append(Match(entity, m.start(), m.end(), score))
            elif entity == "IBAN":  # the last group may belong to the next word: try without it
                shorter = re.sub(r"[ \-]?[A-Z0-9]{1,4}$", "", value)
                if validate(shorter):
                    found.append(Match(entity, m.start(), m.start() + len(shorter), score))
    found.sort(key=lambda m: (m.start, -(m.end - m.start)))
    kept: list[Match] = []
    for m in found:
        if not kept or m.start >= kept[-1].end:
            kept.append(m)
    return kept


def merge(ours: list[Match], more: list[Match]) -> list[Match]:
    """``ours`` plus the matches of ``more`` that overlap none of them (ours win: they are validated)."""
    kept = list(ours)
    for m in sorted(more, key=lambda m: (m.start, -(m.end - m.start), -m.score)):
        if all(m.end <= k.start or m.start >= k.end for k in kept):
            kept.append(m)
    return sorted(kept, key=lambda m: m.start)


def redact(text: str, matches: list[Match]) -> str:
    """Replace each match by ``[ENTITY]``; everything else stays as it was."""
    out, last = [], 0
    for m in sorted(matches, key=lambda m: m.start):
        out.append(text[last:m.start])
        out.append(f"[{m.entity}]")
        last = m.end
    out.append(text[last:])
    return "".join(out)


class PiiConfig(BaseRailConfig):
    """Personal data and secrets, validated; redacted in place or blocked."""

    rail: Literal["pii"] = Field(description="This rail.")
    action: Literal["block", "redact", "warn"] = Field("block", description="What a finding does.")
    entities: list[str] | None = Field(None, description="Entity types to find (None: all).")
    presidio: Literal["off", "auto", "required"] = Field(
        "off", description="Add Presidio's recognisers (offline pattern recognisers; more entity types, "
        "~5-10 ms per 1,000 tokens). auto: when presidio-analyzer is installed; required: fail without it.")
    presidio_min_score: float = Field(0.5, ge=0, le=1, description="Lowest Presidio score kept.")

    @field_validator("presidio", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v  # YAML reads off as False

    @model_validator(mode="after")
    def _presidio_installed(self) -> PiiConfig:
        if self.presidio == "required" and not presidio.installed():
            raise ValueError("presidio: required, but presidio-analyzer is not installed "
                             "(pip install -e '.[presidio]', or set presidio: auto)")
        return self


class PiiRail(Rail):
    name: ClassVar[str] = "pii"
    cfg: PiiConfig

    def __init__(self, cfg: PiiConfig, registry: Any = None) -> None:
        super().__init__(cfg)
        self.wanted = set(cfg.entities) if cfg.entities else None

    def find(self, text: str) -> list[Match]:
        """Our validated matches, plus Presidio's where the config asks for them (ours win overlaps)."""
        matches = find(text, self.wanted)
        if self.cfg.presidio == "required" or (self.cfg.presidio == "auto" and presidio.installed()):
            more = presidio.find(text, self.wanted, self.cfg.presidio_min_score)
            matches = merge(matches, [Match(e, a, b, s) for e, a, b, s in more])
        return matches

    def check(self, text: str, ctx: CheckContext) -> RailResult:
        reason = "personal data or a secret"
        matches = self.find(text)
        # obfuscated PII (zero-width characters, fullwidth digits) shows in the normalised form
        if not matches and ctx.forms[0] != text:
            hidden = self.find(ctx.forms[0])
            if hidden:
                return RailResult(True, [Finding(self.name, m.entity, None, m.score) for m in hidden],
                                  redact(ctx.forms[0], hidden), reason)
        return RailResult(bool(matches), [Finding(self.name, m.entity, (m.start, m.end), m.score) for m in matches],
                          redact(text, matches), reason)
