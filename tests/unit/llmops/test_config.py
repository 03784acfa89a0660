from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from llmops.config import (
    StrictModel,
    config_hash,
    load_config,
    parse_overrides,
    schema_for,
)
from llmops.errors import ConfigError
from llmops.plugins import config_schemas

REPO = Path(__file__).resolve().parents[3]


class Inner(StrictModel):
    lr: float = Field(1e-4, description="learning rate")
    steps: int = Field(10, ge=1, description="steps")


class Outer(StrictModel):
    name: str = Field(description="name")
    train: Inner = Field(default_factory=Inner, description="training")
    tags: list[str] = Field(default_factory=list, description="tags")


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_good_file_and_overrides(tmp_path):
    p = write(tmp_path, "name: a\ntrain:\n  lr: 0.5\n")
    cfg = load_config(p, Outer, ["train.steps=7", "tags=[x, y]", "name=b"])
    assert cfg.train.lr == 0.5 and cfg.train.steps == 7
    assert cfg.tags == ["x", "y"] and cfg.name == "b"


def test_all_problems_reported_with_lines_and_fields(tmp_path):
    p = write(tmp_path, "name: a\ntrain:\n  lr: fast\n  steps: 0\n  epochs: 3\ncolour: red\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, Outer)
    msg = str(e.value)
    assert str(p) in msg and "4 problem(s)" in msg
    assert "line 3, train.lr" in msg and "'fast'" in msg
    assert "line 4, train.steps" in msg
    assert "line 5, train.epochs: unknown key; allowed keys here: lr, steps" in msg
    assert "line 6, colour: unknown key; allowed keys here: name, tags, train" in msg


def test_missing_required_field(tmp_path):
    with pytest.raises(ConfigError, match="name: required field is missing"):
        load_config(write(tmp_path, "train: {lr: 1}\n"), Outer)


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid YAML at line 2"):
        load_config(write(tmp_path, "name: a\ntrain: x: y\n"), Outer)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", Outer)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), Outer)


def test_bad_override_rejected():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_overrides(["train..lr=1"])
    assert parse_overrides(["a.b=1", "a.c=true", "d=null"]) == {"a": {"b": 1, "c": True}, "d": None}


def test_config_hash_is_stable_and_sensitive():
    a = Outer(name="x")
    assert config_hash(a) == config_hash(Outer(name="x"))
    assert config_hash(a) != config_hash(Outer(name="y"))


def _fields_without_description(model: type[BaseModel], seen=None) -> list[str]:
    seen = seen if seen is not None else set()
    if model in seen:
        return []
    seen.add(model)
    missing = []
    for name, field in model.model_fields.items():
        if not field.description:
            missing.append(f"{model.__name__}.{name}")
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                missing += _fields_without_description(arg, seen)
    return missing


@pytest.mark.parametrize("folder", sorted(k for k in config_schemas() if "/" not in k))
def test_every_schema_is_strict_and_described(folder):
    model = schema_for(folder)
    assert model.model_config.get("extra") == "forbid"
    assert _fields_without_description(model) == []


def all_config_files() -> list[Path]:
    return sorted((REPO / "configs").glob("*/*.yaml"))


def test_every_config_folder_has_a_schema():
    folders = {p.parent.name for p in all_config_files()}
    assert folders and folders <= set(config_schemas())


@pytest.mark.parametrize("path", all_config_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_validates_and_names_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Used by:"), f"{path} must start with a comment naming its command"
    load_config(path, schema_for(path.parent.name, path.name))


def test_unknown_schema_folder():
    with pytest.raises(ConfigError, match="No config schema"):
        schema_for("nope")


class WithList(StrictModel):
    items: list[Inner] = Field(default_factory=list, description="items")


def test_override_into_a_list_by_index(tmp_path):
    p = write(tmp_path, "items:\n  - {lr: 1}\n  - {lr: 2}\n")
    cfg = load_config(p, WithList, ["items.1.steps=5"])
    assert cfg.items[1].steps == 5 and cfg.items[1].lr == 2 and cfg.items[0].steps == 10
    with pytest.raises(ConfigError, match="has 2 items"):
        load_config(p, WithList, ["items.2.steps=5"])
