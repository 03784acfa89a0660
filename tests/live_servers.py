"""Real servers for the scale-out tests, started from the machine's packages on loopback ports.

Redis from Debian's ``redis-server``, PostgreSQL from Debian's ``postgresql`` (its ``initdb`` / ``pg_ctl``),
the MLflow tracking server from the project's own environment. Where a binary is missing the test is
skipped with the command that installs it, unless ``LLMOPS_REQUIRE_SERVERS=1`` (set by ``.ci/run``): then a
missing server is a failure, so CI never passes by skipping them.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from serving.engine import free_port

INSTALL_HINT = "apt-get install -y redis-server postgresql (or run .ci/run, which does it)"


def _missing(what: str) -> None:
    message = f"{what} not found; install it: {INSTALL_HINT}"
    if os.environ.get("LLMOPS_REQUIRE_SERVERS") == "1":
        pytest.fail(message + " (LLMOPS_REQUIRE_SERVERS=1)")
    pytest.skip(message)


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _started(server, wait) -> None:
    """Wait for ``server`` to come up; if it does not, stop what was started (processes, folders) and re-raise."""
    try:
        wait()
    except BaseException:
        server.stop()
        raise


class RedisServer:
    """``redis-server`` on a free loopback port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            _missing("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.RedisError:
                return False

        self.log.touch()
        _started(self, lambda: _wait(up, "redis-server", self.proc, self.log))
        self.client = client

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A throw-away PostgreSQL cluster (``initdb`` in a temporary folder) on a free loopback port. PostgreSQL
    refuses to run as root, so as root the cluster belongs to the ``postgres`` user the package creates."""

    def __init__(self, workdir: Path) -> None:
        bindir = _pg_bin()
        if bindir is None:
            _missing("PostgreSQL (initdb)")
        self.port = free_port()
        # its own folder directly under the temp dir: as root, the cluster's user must reach it (pytest's
        # temporary folders are private to root)
        self.dir = Path(tempfile.mkdtemp(prefix="llmops-pg-", dir=workdir if os.geteuid() else None))
        self.data = self.dir / "pgdata"
        self.log = self.dir / "postgres.log"
        self.log.touch()
        self._as = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            shutil.chown(self.log, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        init = subprocess.run([*self._as, str(bindir / "initdb"), "-D", str(self.data), "-U", "llmops",
                               "--auth=trust", "-E", "UTF8", "--no-sync"], capture_output=True, text=True)
        if init.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
        self.proc = subprocess.Popen(
            [*self._as, str(bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.dir), "-c", "fsync=off", "-c", "full_page_writes=off"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115 - closed with the process
        import psycopg

        def up() -> bool:
            try:
                psycopg.connect(host="127.0.0.1", port=self.port, user="llmops", dbname="postgres").close()
                return True
            except psycopg.OperationalError:
                return False

        self._bindir = bindir
        _started(self, lambda: _wait(up, "postgres", self.proc, self.log))

    def create_db(self, name: str) -> str:
        """A new database; its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="llmops", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://llmops@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        # through pg_ctl: as root self.proc is runuser, which does not pass SIGTERM on to the server
        try:
            subprocess.run([*self._as, str(self._bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                            "stop"], capture_output=True, timeout=60)
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            subprocess.run(["pkill", "-9", "-f", str(self.data)], capture_output=True)
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` with a database backend store and artifacts served by the server itself
    (``--artifacts-destination``), as a team runs it."""

    def __init__(self, backend_uri: str, workdir: Path) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "mlflow.log"
        self.log.touch()
        self.artifacts = workdir / "artifacts"  # what the server stores for its clients
        mlflow = Path(sys.executable).with_name("mlflow")
        env = {**os.environ, "MLFLOW_TRACKING_URI": "", "GUNICORN_CMD_ARGS": "--timeout 120"}
        env.pop("MLFLOW_TRACKING_URI")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", backend_uri,
             "--artifacts-destination", self.artifacts.as_uri(), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env,  # noqa: SIM115
            start_new_session=True)  # its workers are stopped with it, as a group

        def up() -> bool:
            try:
                return httpx.get(self.url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _started(self, lambda: _wait(up, "mlflow server", self.proc, self.log, timeout_s=120))

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
