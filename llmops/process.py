"""Waiting for a server process this project started (``llmops serve`` for an eval, the demo's
gateway): ready when an HTTP URL answers 200, failed when the process exits first::

    proc = subprocess.Popen([...])
    wait_ready(proc, "http://127.0.0.1:8000/ready", timeout_s=600, log_path=Path("serve.log"))
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from llmops.errors import LLMOpsError


class NotReadyError(LLMOpsError):
    """The process exited, or did not answer in time; the message carries its log's tail."""


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float, log_path: Path | None = None,
               poll_s: float = 1.0) -> float:
    """Block until ``url`` answers 200; returns the seconds waited.

    Raises:
        NotReadyError: the process exited first, or ``timeout_s`` passed.
    """
    import httpx

    start = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise NotReadyError(f"the process exited with {proc.returncode} before {url} answered"
                                + (f"; see {log_path}:\n{_tail(log_path)}" if log_path else ""))
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        if time.monotonic() - start > timeout_s:
            raise NotReadyError(f"{url} was not ready after {timeout_s:.0f} s"
                                + (f"; see {log_path}:\n{_tail(log_path)}" if log_path else ""))
        time.sleep(poll_s)


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
