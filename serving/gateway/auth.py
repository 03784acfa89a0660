"""API keys: kept only as sha256 digests; a request carries ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hashlib
import hmac
import os

from serving.config import ApiKey, AuthConfig
from serving.gateway.errors import APIError


def hash_key(key: str) -> str:
    """The sha256 hex digest stored in config for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """Looks up the key id for a presented key (constant-time digest comparison)."""

    def __init__(self, cfg: AuthConfig) -> None:
        self.enabled = cfg.enabled
        self.keys: list[ApiKey] = list(cfg.keys)
        for item in filter(None, os.environ.get(cfg.keys_env, "").split(",")):
            key_id, sep, secret = item.strip().partition(":")
            if sep and secret:
                self.keys.append(ApiKey(id=key_id, sha256=hash_key(secret)))

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
        digest = hash_key(header[7:].strip())
        for key in self.keys:
            if hmac.compare_digest(key.sha256, digest):
                return key
        raise APIError(401, "Invalid API key.", "authentication_error", "invalid_api_key")
