"""Exceptions shared by every module.

Every error the user can fix derives from :class:`LLMOpsError`; its message says what is wrong
and how to fix it. The CLI turns these into a one-screen message and exit code 2.
"""

from __future__ import annotations


class LLMOpsError(Exception):
    """Base for errors the user can act on. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 2


class ConfigError(LLMOpsError):
    """A configuration file or override is invalid (the message names file, field and fix)."""


class AssetError(LLMOpsError):
    """A default model asset is missing, unreadable or fails its sha256 check."""


class RegistryError(LLMOpsError):
    """A registry operation failed or a reference (``name@alias``, ``name/version``) is unknown."""
