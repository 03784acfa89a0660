"""What the feature packages register with the core (entry points in pyproject.toml), so the core
imports none of them by name:

- ``llmops.config_schemas``: the pydantic model of each ``configs/<folder>/`` (or of one file there);
- ``llmops.guards``: the guard that the gateway and the RAG pipeline load from a policy file.

Example::

    from llmops.plugins import config_schema, load_guard
    config_schema("serving")                   # serving.config.ServingConfig
    guard = load_guard(None)                    # the default policy; a llmops.contracts.GuardHook
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmops.errors import ConfigError, LLMOpsError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from llmops.contracts import GuardHook, RegistryAPI


@cache
def _group(name: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=name)}


def config_schemas() -> dict[str, EntryPoint]:
    """``folder`` or ``folder/file.yaml`` -> the entry point of its config model."""
    return _group("llmops.config_schemas")


def config_schema(folder: str, filename: str | None = None) -> type[BaseModel]:
    """The config model for ``configs/<folder>/`` (or for one file there with its own schema).

    Raises:
        ConfigError: no schema is registered for that folder (or the package is not installed).
    """
    known = config_schemas()
    ep = known.get(f"{folder}/{filename}") or known.get(folder)
    if ep is None:
        raise ConfigError(f"No config schema for configs/{folder}/ (known: {', '.join(sorted(known))}). "
                          "A package registers one under [project.entry-points.\"llmops.config_schemas\"]; "
                          "reinstall the project (make setup) after adding it.")
    return ep.load()


def load_guard(policy: str | Path | None = None, registry: RegistryAPI | None = None) -> GuardHook:
    """The registered guard (``llmops.guards`` entry ``default``) built from a policy file (None: the
    shipped default policy).

    Raises:
        LLMOpsError: no guard is installed. ConfigError: the policy is invalid.
    """
    ep = _group("llmops.guards").get("default")
    if ep is None:
        raise LLMOpsError("No guardrails package is installed (entry point llmops.guards:default); "
                          "install the project with `make setup`, or turn guardrails off.")
    guard_cls: Any = ep.load()
    return guard_cls.from_config(policy, registry)
