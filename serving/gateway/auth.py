"""API keys: kept only as sha256 digests; a request carries ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from pathlib import Path

from serving.config import ApiKey, AuthConfig
from serving.gateway.errors import APIError

log = logging.getLogger(__name__)


def hash_key(key: str) -> str:
    """The sha256 hex digest stored in config for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """Looks up the key id for a presented key (constant-time digest comparison).

    Keys come from the config and from the key file or, replacing the file's keys when set, the
    ``keys_env`` variable. The key file is read again when it changes (checked at most once a second), so
    ``llmops serve keys create|revoke`` take effect on a running gateway.
    """

    def __init__(self, cfg: AuthConfig) -> None:
        self.enabled = cfg.enabled
        self.cfg = cfg
        self._file = Path(cfg.keys_file)
        self._file_state: tuple[float, int] | None = None
        self._checked = 0.0
        env = [item.strip().partition(":") for item in os.environ.get(cfg.keys_env, "").split(",") if item.strip()]
        self.from_env = [ApiKey(id=k, sha256=hash_key(secret)) for k, sep, secret in env if sep and secret]
        self.keys: list[ApiKey] = []
        self._load()

    def _load(self) -> None:
        from serving.gateway.keys import list_keys

        if self.from_env:  # the variable replaces the file's keys
            self.keys = [*self.cfg.keys, *self.from_env]
            return
        try:
            st = self._file.stat()
            self._file_state = (st.st_mtime, st.st_size)
        except OSError:
            self._file_state = None
        self.keys = [*self.cfg.keys, *list_keys(self._file)]

    def _refresh(self) -> None:
        now = time.monotonic()
        if self.from_env or now - self._checked < 1.0:
            return
        self._checked = now
        try:
            st = self._file.stat()
            state = (st.st_mtime, st.st_size)
        except OSError:
            state = None
        if state != self._file_state:
            try:
                self._load()
            except Exception as e:  # noqa: BLE001 - a broken file keeps the keys already loaded
                log.error("API key file %s could not be read again (%s); keeping the keys loaded before",
                          self._file, e)

    def authenticate(self, header: str | None) -> ApiKey | None:
        """The matching key (None when auth is off).

        Raises:
            APIError: 401 when the key is missing or unknown.
        """
        if not self.enabled:
            return None
        if not header or not header.lower().startswith("bearer "):
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                           "authentication_error", "missing_api_key")
        self._refresh()
        digest = hash_key(header[7:].strip())
        for key in self.keys:
            if hmac.compare_digest(key.sha256, digest):
                return key
        raise APIError(401, "Invalid API key.", "authentication_error", "invalid_api_key")
