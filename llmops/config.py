"""YAML configuration files -> validated pydantic models.

Every module describes its configuration as a :class:`StrictModel` subclass (unknown keys are
errors, every field has a description). :func:`load_config` reads a YAML file, applies dotted
``key=value`` overrides from the command line and validates, reporting *all* problems at once
with the file, the line and the field::

    from llmops.config import load_config
    from llmops.assets import AssetsConfig
    cfg = load_config("configs/assets/default.yaml", AssetsConfig, ["models_dir=/tmp/models"])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from llmops.errors import ConfigError

T = TypeVar("T", bound=BaseModel)

class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=3", "c=[1, 2]"]`` into ``{"a": {"b": 3}, "c": [1, 2]}``.

    Values are parsed as YAML, so numbers, booleans, lists and null work as in the file.

    Raises:
        ConfigError: an item has no ``=`` or an empty key.
    """
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"Override {item!r} is not of the form dotted.key=value "
                "(for example training.max_steps=20)."
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"Override {item!r} conflicts with an earlier override of {part!r}.")
            node = child
        node[parts[-1]] = value
    return result


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``extra`` merged in (nested dicts merged, everything else replaced)."""
    out = dict(base)
    for key, value in extra.items():
        current = out.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            out[key] = deep_merge(current, value)
        elif isinstance(value, dict) and isinstance(current, list) and all(k.isdigit() for k in value):
            # engines.0.port=9000: index into a list
            items = list(current)
            for index, item in value.items():
                i = int(index)
                if i >= len(items):
                    raise ConfigError(f"Override {key}.{index}: the list {key} has {len(items)} items.")
                both = isinstance(item, dict) and isinstance(items[i], dict)
                items[i] = deep_merge(items[i], item) if both else item
            out[key] = items
        else:
            out[key] = value
    return out


def _yaml_lines(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text)
    except yaml.YAMLError:
        return None


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            key_node = next((k for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                break
            line = key_node.start_mark.line + 1 if key_node is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes inside an annotation (X | None, list[X], dict[str, X], unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out += _models_in(arg)
    origin = getattr(annotation, "__origin__", None)  # Annotated[X, ...] keeps X in __origin__
    if origin is not None and not getattr(annotation, "__args__", None):
        out += _models_in(origin)
    return out


def _is_tag(model: type[BaseModel], part: str) -> bool:
    """Whether ``part`` is the tag of ``model`` in a discriminated union (a field typed Literal[part])."""
    return any(getattr(f.annotation, "__args__", None) == (part,) for f in model.model_fields.values())


def _walk(model: type[BaseModel], loc: Sequence[int | str]) -> tuple[list[int | str], list[type[BaseModel]]]:
    """``loc`` without discriminated-union tags (pydantic puts the tag, e.g. ``pii``, into the path),
    and the models that the path ends in."""
    current, clean = [model], []
    for part in loc:
        if isinstance(part, int):
            clean.append(part)
            continue
        tagged = [m for m in current if _is_tag(m, part)]
        if len(current) > 1 and tagged:
            current = tagged
            continue
        clean.append(part)
        current = [sub for m in current if part in m.model_fields
                   for sub in _models_in(m.model_fields[part].annotation)]
    return clean, current


def _allowed_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The field names allowed at the parent of ``loc`` (for 'unknown key' messages)."""
    _, parents = _walk(model, loc[:-1])
    if len(parents) == 1:
        return sorted(f.alias or name for name, f in parents[0].model_fields.items())
    return []


def format_validation_error(
    err: ValidationError, model: type[BaseModel], source: str, text: str | None = None
) -> str:
    """A one-screen message listing every problem with line and dotted field path."""
    root = _yaml_lines(text) if text else None
    lines = [f"{source}: {err.error_count()} problem(s) in the configuration:"]
    for e in err.errors():
        loc, _ = _walk(model, e["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc) if root is not None else None
        where = f"line {line}, " if line else ""
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, e["loc"])
            msg = "unknown key" + (f"; allowed keys here: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "union_tag_not_found":  # e.g. a rail without its `rail:` key
            field += "." + str(e.get("ctx", {}).get("discriminator", "")).strip("'\"")
            msg = "required field is missing (it names which kind this entry is)"
        else:
            got = e.get("input")
            shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
            if len(shown) > 60:
                shown = shown[:57] + "..."
            msg = f"{e['msg']} (got {shown})"
        lines.append(f"  - {where}{field}: {msg}")
    lines.append("Fix the file or the key=value override and run again.")
    return "\n".join(lines)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], str]:
    """Read a YAML mapping; returns (data, text).

    Raises:
        ConfigError: the file is missing, unreadable, not YAML or not a mapping.
    """
    p = resolve_config_path(path)
    if not p.is_file():
        raise ConfigError(f"Config file {p} does not exist. Pass an existing file (see configs/).")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"Config file {p} cannot be read as UTF-8 text: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}. Fix the syntax and run again.") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, not {type(data).__name__}.")
    return data, text


def load_config(
    path: str | Path | None, model: type[T], overrides: Iterable[str] = ()
) -> T:
    """Load and validate a config file (or only defaults when ``path`` is None).

    Args:
        path: a YAML file; None validates the defaults plus overrides.
        model: the StrictModel subclass describing the file.
        overrides: dotted ``key=value`` strings applied on top of the file.

    Raises:
        ConfigError: with every problem, its line and field, and how to fix it.
    """
    data, text, source = {}, None, "<defaults>"
    if path is not None:
        data, text = read_yaml(path)
        source = str(path)
    extra = parse_overrides(overrides)
    if extra:
        data = deep_merge(data, extra)
        source += " (with overrides)"
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, source, text)) from e


def config_hash(cfg: BaseModel) -> str:
    """sha256 of the validated config (canonical JSON), used as a lineage tag."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def schema_for(folder: str, filename: str | None = None) -> type[BaseModel]:
    """The config model for ``configs/<folder>/`` (or one file there): see :func:`llmops.plugins.config_schema`."""
    from llmops.plugins import config_schema

    return config_schema(folder, filename)


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"  # configs/ of the repo, or of the wheel


def resolve_config_path(path: str | Path) -> Path:
    """``path`` as given when it exists; else a relative ``configs/...`` path is taken from the shipped
    configs (package data), so the defaults work from any directory and in an installed wheel."""
    p = Path(path)
    if p.is_file() or p.is_absolute() or not p.parts or p.parts[0] != "configs":
        return p
    shipped = SHIPPED_CONFIGS.joinpath(*p.parts[1:])
    return shipped if shipped.is_file() else p
