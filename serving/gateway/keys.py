"""The API key file (``auth.keys_file``): keys created on this machine, kept as sha256 digests only.

The plain key is printed once, when it is created, and never stored::

    from serving.gateway.keys import create_key, list_keys, revoke_key
    key = create_key("data/serving/keys.json", "ci")      # "sk-llmops-..." (shown once)
    list_keys("data/serving/keys.json")                   # [ApiKey(id="ci", ...)]
    revoke_key("data/serving/keys.json", "ci")

Writes replace the file atomically (a temporary file, then a rename) with mode 0600, so a crash
never leaves half a file and other users cannot read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path

from llmops.errors import ConfigError
from serving.config import ApiKey
from serving.gateway.auth import hash_key

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def list_keys(path: str | Path) -> list[ApiKey]:
    """The keys in the file ([] when it does not exist).

    Raises:
        ConfigError: the file is not a key file (not JSON, or entries without id and sha256).
    """
    p = Path(path)
    if not p.is_file():
        return []
    try:
        return [ApiKey.model_validate(k) for k in json.loads(p.read_text())["keys"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{p} is not an API key file ({e}); fix it or remove it and create keys again "
                          "with `llmops serve keys create`.") from e


def _write(path: Path, keys: list[ApiKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"keys": [k.model_dump(exclude_none=True) for k in keys]}, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the rename makes it the key file
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _locked(path: Path):
    """One writer at a time (read, change, write) across processes: `keys create` while a server starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def create_key(path: str | Path, key_id: str, *, generated: bool = False) -> str:
    """Create a key ``key_id``, store its digest and return the plain key (shown once).

    Raises:
        ConfigError: the id is invalid or taken.
    """
    if not _ID.match(key_id):
        raise ConfigError(f"Key id {key_id!r} is invalid: use letters, digits, '_', '.', '-' (64 at most).")
    with _locked(Path(path)):
        keys = list_keys(path)
        if any(k.id == key_id for k in keys):
            raise ConfigError(f"A key with id {key_id!r} exists; revoke it first (`llmops serve keys revoke "
                              f"{key_id}`) or choose another id.")
        secret = "sk-llmops-" + secrets.token_urlsafe(24)
        _write(Path(path), [*keys, ApiKey(id=key_id, sha256=hash_key(secret), generated=generated,
                                          created=round(time.time(), 3))])
    return secret


def revoke_key(path: str | Path, key_id: str) -> bool:
    """Remove the key ``key_id``; False when there was none."""
    with _locked(Path(path)):
        keys = list_keys(path)
        kept = [k for k in keys if k.id != key_id]
        if len(kept) == len(keys):
            return False
        _write(Path(path), kept)
    return True
