"""Start engines and the gateway from a :class:`ServingConfig`; stop them cleanly.

Example::

    from llmops.config import load_config
    from serving.config import ServingConfig
    from serving.server import Server
    server = Server(load_config("configs/serving/default.yaml", ServingConfig))
    server.start()            # engines ready, adapters loaded, gateway app built
    server.serve_forever()    # uvicorn on cfg.host:cfg.port until Ctrl-C / SIGTERM
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from llmops.assets import resolve_model
from llmops.contracts import RegistryAPI
from serving.config import ServingConfig
from serving.engine import Engine, EngineError, RemoteEngine, port_in_use

log = logging.getLogger(__name__)

# Servers started by other jobs (an eval serving a registry version) set their own pid file.
PID_FILE = Path(os.environ.get("LLMOPS_PID_FILE", "data/serve.pid"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_key(cfg: ServingConfig) -> str | None:
    """With auth on and no key anywhere (config, key file, the keys variable), create one in the key file
    (marked generated) and return it so the caller shows it once; None when keys exist."""
    from serving.gateway.auth import KeyStore
    from serving.gateway.keys import create_key

    if not cfg.auth.enabled or KeyStore(cfg.auth).keys:
        return None
    return create_key(cfg.auth.keys_file, "default", generated=True)


def check_exposure(cfg: ServingConfig, insecure: bool) -> None:
    """A gateway on a non-loopback address needs auth with keys someone chose (not only the generated
    local default), unless ``insecure`` says otherwise, which is logged loudly.

    Raises:
        EngineError: the address is reachable from other machines and the keys are not enough.
    """
    from serving.gateway.auth import KeyStore

    if is_loopback(cfg.host):
        return
    keys = KeyStore(cfg.auth).keys if cfg.auth.enabled else []
    if keys and not all(k.generated for k in keys):
        return
    why = "auth is off" if not cfg.auth.enabled else ("it has no keys" if not keys else
                                                      "its only keys are generated local ones (default, demo)")
    if not insecure:
        raise EngineError(f"The gateway would listen on {cfg.host}, reachable from other machines, and {why}. Create "
                          "keys for the people who use it (`llmops serve keys create --id NAME`), or pass --insecure "
                          "if this is really meant.")
    log.warning("SERVING ON %s WITH %s (--insecure): anyone who reaches this address can use the models",
                cfg.host, why.upper())


class Server:
    def __init__(self, cfg: ServingConfig, log_dir: str | Path = "data/logs",
                 registry: RegistryAPI | None = None, insecure: bool = False) -> None:
        self.cfg = cfg
        self.log_dir = Path(log_dir)
        self.registry = registry
        self.insecure = insecure
        self.engines: list[Engine] = []
        self.state = None
        self.app = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Start and wait for every engine, then build the gateway state and app.

        Raises:
            EngineError: an engine failed to start (the others are stopped again).
            AssetError / RegistryError: a model that cannot be resolved.
        """
        from serving.gateway.app import create_app
        from serving.gateway.state import GatewayState

        check_exposure(self.cfg, self.insecure)
        if port_in_use(self.cfg.host, self.cfg.port):
            raise EngineError(f"Gateway port {self.cfg.port} is in use: stop the running server "
                              "(`make stop`) or pass port=<free port>.")
        paths = {}
        for ec in self.cfg.engines:
            paths[ec.served_name] = resolve_model(ec.model, self.cfg.models_dir)
            if ec.url:  # started and supervised elsewhere: only reached
                self.engines.append(RemoteEngine(ec))
                continue
            lora = self.cfg.lora_enabled(ec)
            self.engines.append(Engine(ec.model_copy(update={"enable_lora": lora}), paths[ec.served_name],
                                       self.log_dir))
        try:
            for e in self.engines:
                e.start()
            for e in self.engines:
                e.wait_ready()
            if self.cfg.adapters and self.registry is None:
                from llmops.registry import Registry

                self.registry = Registry()
            self.state = GatewayState(self.cfg, self.engines, paths, self.registry)
            self.state.sync_adapters()
            self.state.rollouts.sync()  # a rollout running before a restart goes on
        except BaseException:
            self.stop()
            raise
        self.app = create_app(self.state)
        if self.cfg.adapters and self.cfg.rollout_poll_s > 0:
            threading.Thread(target=self._poll, name="rollout", daemon=True).start()

    def _poll(self) -> None:
        while not self._stop.wait(self.cfg.rollout_poll_s):
            try:
                changed = self.state.sync_adapters()
                if changed:
                    log.info("rollout: %s now serve new registry versions", ", ".join(changed))
                self.state.rollouts.sync()
                self.state.rollouts.decide()
            except Exception as e:  # noqa: BLE001 - the poller must survive a registry hiccup
                log.warning("rollout poll failed: %s", e)

    def serve_forever(self) -> None:
        """Run uvicorn until interrupted; engines are stopped on the way out."""
        import uvicorn

        PID_FILE.parent.mkdir(parents=True, exist_ok=True)
        PID_FILE.write_text(str(os.getpid()))
        # uvicorn re-raises SIGTERM after its own shutdown; turn it into SystemExit so the
        # engines below are stopped instead of the process dying on the spot.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            uvicorn.run(self.app, host=self.cfg.host, port=self.cfg.port, log_level="warning",
                        access_log=False)
        finally:
            self.stop()
            PID_FILE.unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()
        for e in self.engines:
            e.stop()


def stop_running(pid_file: Path = PID_FILE) -> bool:
    """Send SIGTERM to a server started by `llmops serve` (True if one was running)."""
    if not pid_file.is_file():
        return False
    try:
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        return True
    except (ProcessLookupError, ValueError):
        pid_file.unlink(missing_ok=True)
        return False
