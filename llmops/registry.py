"""The one registry for every artifact: base models, LoRA adapters, classic models, RAG indexes.

This is the only module that imports mlflow. The default store is SQLite under ``mlruns/`` with
local artifacts; ``MLFLOW_TRACKING_URI`` (or ``tracking_uri`` in config) selects a tracking
server for a team. Each version carries lineage tags (dataset sha256, base model, config hash,
git commit); aliases (``champion``, ``challenger``) move with an audit record, which MLflow itself
does not keep::

    from llmops.registry import Registry, Lineage
    reg = Registry()
    v = reg.register("demo-adapter", "outputs/adapter", kind="adapter",
                     lineage=Lineage(dataset_sha256="ab12..."), aliases=["challenger"])
    reg.set_alias("demo-adapter", "champion", v.version, reason="eval gate passed")
    print(reg.resolve("demo-adapter@champion").local_path)
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import Field

from llmops.config import StrictModel
from llmops.errors import RegistryError

log = logging.getLogger(__name__)

Kind = Literal["base_model", "adapter", "classic_model", "rag_index", "guardrail_model"]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
AUDIT_EXPERIMENT = "llmops-registry-audit"
UNAUDITED_ACTOR = "unknown (outside llmops)"  # the actor of a move detected after the fact
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class RegistryConfig(StrictModel):
    """Where the registry lives. Relative paths are taken from the current directory."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (http://host:5000 for a team server). None: the "
        "MLFLOW_TRACKING_URI environment variable, else SQLite at <root>/mlflow.db.",
    )
    root: str = Field("mlruns", description="Folder for the default SQLite store and artifacts.")
    experiment: str = Field("llmops", description="MLflow experiment that holds registration runs.")


@dataclass(frozen=True)
class Lineage:
    """Where an artifact came from; stored as tags on its registry version."""

    dataset_sha256: str | None = None
    base_model: str | None = None
    config_hash: str | None = None
    git_commit: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        tags = {
            "lineage.dataset_sha256": self.dataset_sha256,
            "lineage.base_model": self.base_model,
            "lineage.config_hash": self.config_hash,
            "lineage.git_commit": self.git_commit or git_commit(),
        }
        tags.update({f"lineage.{k}": v for k, v in self.extra.items()})
        return {k: str(v) for k, v in tags.items() if v is not None}


@dataclass(frozen=True)
class ModelVersion:
    """One registered version and where its files are."""

    name: str
    version: int
    kind: str
    source: str
    run_id: str | None
    tags: dict[str, str]
    aliases: tuple[str, ...]
    local_path: Path | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class AliasMove:
    """An audit record: who moved which alias of which model, when, from what, to what and why."""

    name: str
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    timestamp: float


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit (suffixed ``-dirty`` with uncommitted changes), None outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a folder (relative paths and file contents, in sorted order)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """Split ``name@alias``, ``name/version`` or ``models:/name@alias`` into (name, alias, version).

    Raises:
        RegistryError: the reference has neither form.
    """
    r = ref.removeprefix("models:/")
    if "@" in r:
        name, alias = r.split("@", 1)
        if _NAME_RE.match(name) and _ALIAS_RE.match(alias):
            return name, alias, None
    elif "/" in r:
        name, version = r.rsplit("/", 1)
        if _NAME_RE.match(name) and version.isdigit():
            return name, None, int(version)
    raise RegistryError(
        f"{ref!r} is not a registry reference. Use name@alias (e.g. smollm2@champion) "
        "or name/version (e.g. smollm2/3)."
    )


def _local_path_of(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


class Registry:
    """Registry operations on an MLflow store (SQLite by default, a server by URI)."""

    def __init__(self, config: RegistryConfig | None = None) -> None:
        import mlflow  # heavy: imported only when a registry is used
        from mlflow.tracking import MlflowClient

        self.config = config or RegistryConfig()
        root = Path(self.config.root).resolve()
        uri = self.config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self._local = uri is None
        if uri is None:
            root.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{root / 'mlflow.db'}"
        self.tracking_uri = uri
        self._artifact_root = (root / "artifacts").as_uri() if self._local else None
        self._mlflow = mlflow
        try:
            self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            self._experiment_id = self._ensure_experiment(self.config.experiment)
        except Exception as e:  # noqa: BLE001 - mlflow raises many kinds; we add the fix
            raise RegistryError(
                f"Cannot open the MLflow store at {uri}: {e}. Check MLFLOW_TRACKING_URI / "
                "registry.tracking_uri, or remove a corrupted local store under "
                f"{self.config.root}/."
            ) from e

    # ----------------------------------------------------------------- helpers
    def _ensure_experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = f"{self._artifact_root}/{name}" if self._artifact_root else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:
            # another process (a second gateway starting at the same time) created it in between
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _to_version(self, mv: Any, with_path: bool = False) -> ModelVersion:
        return ModelVersion(
            name=mv.name,
            version=int(mv.version),
            kind=mv.tags.get("llmops.kind", "unknown"),
            source=mv.source,
            run_id=mv.run_id,
            tags=dict(mv.tags),
            aliases=tuple(getattr(mv, "aliases", []) or []),
            local_path=self._materialize(mv) if with_path else None,
        )

    def _materialize(self, mv: Any) -> Path:
        local = _local_path_of(mv.source)
        if local is not None:
            if not local.exists():
                raise RegistryError(
                    f"{mv.name}/{mv.version}: its files at {local} are gone. Re-register it or "
                    "restore the artifact store."
                )
            return local
        dest = Path(self.config.root).resolve() / "cache" / mv.name / str(mv.version)
        if not dest.exists():
            # a folder of this call's own: processes sharing the cache (two gateways in one directory) may
            # download the same version at once; the first rename wins, the others drop their copy
            dest.parent.mkdir(parents=True, exist_ok=True)
            for stale in dest.parent.glob(f".{dest.name}.partial-*"):  # a download killed midway, long ago
                if time.time() - stale.stat().st_mtime > 3600:
                    shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
            try:
                self._mlflow.artifacts.download_artifacts(
                    artifact_uri=mv.source, dst_path=str(tmp), tracking_uri=self.tracking_uri
                )
                tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from an engine running as another user
                try:
                    tmp.rename(dest)
                except OSError:
                    if not dest.exists():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        children = list(dest.iterdir())
        return children[0] if len(children) == 1 else dest

    # --------------------------------------------------------------- register
    def register(
        self,
        name: str,
        path: str | Path,
        kind: Kind,
        lineage: Lineage | None = None,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        tags: dict[str, str] | None = None,
        description: str | None = None,
        run_id: str | None = None,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        reason: str = "registered",
    ) -> ModelVersion:
        """Register ``path`` (a file or folder) as a new version of ``name``; all or nothing.

        The files are logged as artifacts of a run (``run_id`` or a new one), a model version is
        created with lineage, kind and content-hash tags, and ``aliases`` are set (audited).
        Any failure removes the version, the run it created and, if it created it, the model.

        Raises:
            RegistryError: bad name/kind/path, a model of another kind, or a store failure.
        """
        from mlflow.exceptions import MlflowException

        src = Path(path)
        if not _NAME_RE.match(name):
            raise RegistryError(
                f"Registered model name {name!r} is invalid: use letters, digits, '.', '_' or '-' "
                "(at most 128 characters)."
            )
        if kind not in KINDS:
            raise RegistryError(f"Unknown kind {kind!r}; use one of {', '.join(KINDS)}.")
        if not src.exists():
            raise RegistryError(f"Nothing to register: {src} does not exist.")
        for alias in aliases:
            if not _ALIAS_RE.match(alias):
                raise RegistryError(f"Alias {alias!r} is invalid: use lowercase letters, digits, '_', '-'.")

        version_tags = {"llmops.kind": kind, "llmops.content_sha256": sha256_path(src)}
        version_tags.update((lineage or Lineage()).tags())
        version_tags.update(tags or {})

        created_model = created_run = False
        mv = None
        try:
            try:
                existing = self.client.get_registered_model(name)
                other = existing.tags.get("llmops.kind")
                if other and other != kind:
                    raise RegistryError(
                        f"{name!r} is registered as kind {other!r}, not {kind!r}: use another name."
                    )
            except MlflowException as e:
                if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code):
                    raise
                self.client.create_registered_model(
                    name, tags={"llmops.kind": kind}, description=description
                )
                created_model = True
            if run_id is None:
                run = self.client.create_run(
                    self._experiment_id, run_name=f"register-{name}", tags={"llmops.kind": kind}
                )
                run_id, created_run = run.info.run_id, True
            for k, v in (params or {}).items():
                self.client.log_param(run_id, k, str(v)[:6000])
            for k, v in (metrics or {}).items():
                self.client.log_metric(run_id, k, float(v))
            for k, v in version_tags.items():
                self.client.set_tag(run_id, k, v)
            artifact_path = src.name if src.is_dir() else "file"
            if src.is_dir():
                self.client.log_artifacts(run_id, str(src), artifact_path=artifact_path)
            else:
                self.client.log_artifact(run_id, str(src), artifact_path=artifact_path)
            artifact_uri = self.client.get_run(run_id).info.artifact_uri
            source = f"{artifact_uri}/{artifact_path}"
            if not src.is_dir():
                source = f"{source}/{src.name}"
            mv = self.client.create_model_version(
                name, source=source, run_id=run_id, tags=version_tags, description=description
            )
            self._wait_ready(mv)
            for alias in aliases:
                self.set_alias(name, alias, int(mv.version), reason=reason)
            if created_run:
                self.client.set_terminated(run_id, "FINISHED")
            result = self.client.get_model_version(name, mv.version)
            log.info("registered %s/%s (%s)", name, mv.version, kind)
            return self._to_version(result)
        except Exception as e:
            self._rollback(name, mv, run_id if created_run else None, created_model)
            if isinstance(e, RegistryError):
                raise
            raise RegistryError(
                f"Registering {name!r} failed and was rolled back (nothing was registered): {e}"
            ) from e

    def _wait_ready(self, mv: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = self.client.get_model_version(mv.name, mv.version).status
            if status == "READY":
                return
            if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise RegistryError(f"{mv.name}/{mv.version} did not become READY ({status}).")
            time.sleep(0.2)

    def _rollback(self, name: str, mv: Any, run_id: str | None, created_model: bool) -> None:
        steps = []
        if mv is not None:
            steps.append(lambda: self.client.delete_model_version(name, mv.version))
        if created_model:
            steps.append(lambda: self.client.delete_registered_model(name))
        if run_id is not None:
            def _drop_run() -> None:
                uri = self.client.get_run(run_id).info.artifact_uri
                local = _local_path_of(uri)
                self.client.delete_run(run_id)
                if local is not None:
                    shutil.rmtree(local.parent if local.name == "artifacts" else local, True)
                else:  # a tracking server's store (mlflow-artifacts:, s3:, ...): deleted through MLflow
                    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

                    get_artifact_repository(uri, tracking_uri=self.tracking_uri).delete_artifacts()
            steps.append(_drop_run)
        for step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - best effort, keep rolling back
                log.warning("rollback step failed: %s", e)

    # ----------------------------------------------------------------- aliases
    def set_alias(
        self, name: str, alias: str, version: int, *, reason: str, actor: str | None = None
    ) -> AliasMove:
        """Point ``name@alias`` at ``version`` and write an audit record; both or neither.

        Raises:
            RegistryError: unknown model/version, invalid alias, or a store failure.
        """
        if not _ALIAS_RE.match(alias):
            raise RegistryError(f"Alias {alias!r} is invalid: use lowercase letters, digits, '_', '-'.")
        self.get_version(name, version)  # raises if unknown
        before = self.alias_version(name, alias)
        move = AliasMove(name, alias, before, version, actor or _actor(), reason, time.time())
        self._moved(move, lambda: self.client.set_registered_model_alias(name, alias, str(version)))
        log.info("alias %s@%s: %s -> %s (%s)", name, alias, before, version, reason)
        return move

    def delete_alias(self, name: str, alias: str, *, reason: str, actor: str | None = None) -> AliasMove:
        """Remove ``name@alias`` (audited, both or neither). Raises RegistryError if it is not set."""
        before = self.alias_version(name, alias)
        if before is None:
            raise RegistryError(f"{name}@{alias} is not set.")
        move = AliasMove(name, alias, before, None, actor or _actor(), reason, time.time())
        self._moved(move, lambda: self.client.delete_registered_model_alias(name, alias))
        return move

    def _moved(self, move: AliasMove, apply: Any) -> None:
        """The audit record first (pending), then the move, then the record confirmed: a failure at any
        step leaves the alias as it was and no record of a move that did not happen; a crash between
        the move and the confirmation leaves a pending record that :meth:`audit` confirms from the
        alias itself."""
        try:
            run_id = self._audit(move, state="pending")
        except Exception as e:
            raise RegistryError(f"Could not write the audit record; alias left unchanged: {e}") from e
        try:
            apply()
        except Exception as e:
            self._drop_audit(run_id)
            raise RegistryError(f"Moving {move.name}@{move.alias} failed; nothing changed: {e}") from e
        try:
            self.client.set_tag(run_id, "state", "done")
        except Exception as e:  # noqa: BLE001 - the move happened; audit() confirms it from the alias
            log.warning("audit record of %s@%s not confirmed (%s); it stays pending", move.name, move.alias, e)

    def _drop_audit(self, run_id: str) -> None:
        try:
            self.client.delete_run(run_id)
        except Exception as e:  # noqa: BLE001
            log.warning("could not remove the audit record %s of a failed move: %s", run_id, e)

    def model_tag(self, name: str, key: str) -> str | None:
        """A tag of the registered model ``name`` (None when the model or the tag does not exist)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name).tags.get(key)
        except MlflowException:
            return None

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        """Set a tag of the registered model ``name`` (rollout state lives there). Raises RegistryError."""
        try:
            self.client.set_registered_model_tag(name, key, value)
        except Exception as e:
            raise RegistryError(f"Could not set the tag {key} of {name}: {e}") from e

    def alias_version(self, name: str, alias: str) -> int | None:
        """The version ``name@alias`` points at, or None when unset."""
        from mlflow.exceptions import MlflowException

        try:
            return int(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def _audit(self, move: AliasMove, state: str = "done") -> str:
        exp_id = self._ensure_experiment(AUDIT_EXPERIMENT)
        tags = {
            "model": move.name,
            "alias": move.alias,
            "from_version": "" if move.from_version is None else str(move.from_version),
            "to_version": "" if move.to_version is None else str(move.to_version),
            "actor": move.actor,
            "reason": move.reason[:5000],
            "timestamp": repr(move.timestamp),
            "state": state,
        }
        run = self.client.create_run(exp_id, run_name=f"{move.name}@{move.alias}", tags=tags)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def audit(self, name: str | None = None) -> list[AliasMove]:
        """Every alias move (of ``name``, or of all models), oldest first. A record left pending by a
        crash counts when the alias still shows its move, and is left out when it does not."""
        exp = self.client.get_experiment_by_name(AUDIT_EXPERIMENT)
        if exp is None:
            return []
        flt = f"tags.model = '{name}'" if name else ""
        runs = self.client.search_runs([exp.experiment_id], filter_string=flt, max_results=50000)
        moves = []
        for r in runs:
            t = r.data.tags
            move = AliasMove(
                name=t["model"],
                alias=t["alias"],
                from_version=int(t["from_version"]) if t.get("from_version") else None,
                to_version=int(t["to_version"]) if t.get("to_version") else None,
                actor=t.get("actor", ""),
                reason=t.get("reason", ""),
                timestamp=float(t.get("timestamp", r.info.start_time / 1000)),
            )
            if t.get("state") == "pending":
                if self.alias_version(move.name, move.alias) != move.to_version:
                    continue  # recorded, never applied
                try:  # applied, confirmation lost: confirm it now, so later moves cannot hide it
                    self.client.set_tag(r.info.run_id, "state", "done")
                except Exception as e:  # noqa: BLE001
                    log.warning("could not confirm audit record %s: %s", r.info.run_id, e)
            moves.append(move)
        return sorted(moves, key=lambda m: m.timestamp)

    def last_move(self, name: str, alias: str, *, audited_only: bool = False) -> AliasMove | None:
        """The newest audit record of ``name@alias`` (None when it was never moved); ``audited_only``
        skips moves detected after the fact (made outside the project)."""
        return next((m for m in reversed(self.audit(name)) if m.alias == alias
                     and not (audited_only and m.actor == UNAUDITED_ACTOR)), None)

    def unaudited_move(self, name: str, alias: str, *, detected_by: str = "llmops") -> AliasMove | None:
        """When ``name@alias`` points elsewhere than its last audited move says (moved in the MLflow UI or
        by another tool), record that as an unaudited move (actor :data:`UNAUDITED_ACTOR`) and return it;
        None when they agree."""
        last = self.last_move(name, alias)
        current = self.alias_version(name, alias)
        if current == (last.to_version if last else None) or self.last_move(name, alias) != last:
            return None  # in step, or a move through the project landed between the two reads
        move = AliasMove(name, alias, last.to_version if last else None, current, UNAUDITED_ACTOR,
                         f"UNAUDITED: the alias was moved outside the project; detected by {detected_by}",
                         time.time())
        self._audit(move)
        log.warning("%s@%s was moved outside llmops: %s -> %s (recorded as unaudited)", name, alias,
                    move.from_version, current)
        return move

    # ------------------------------------------------------------------ lookup
    def get_version(self, name: str, version: int, with_path: bool = False) -> ModelVersion:
        """One version. Raises RegistryError if it does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(name, str(version))
        except MlflowException as e:
            raise RegistryError(
                f"{name}/{version} is not in the registry. List versions with "
                f"`llmops registry versions {name}`."
            ) from e
        return self._to_version(mv, with_path)

    def versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, oldest first (empty if the model is unknown)."""
        found = self.client.search_model_versions(f"name = '{name}'")
        if not found:
            return []
        # search results carry no aliases: take them from the registered model
        by_version: dict[int, list[str]] = {}
        for alias, version in self.client.get_registered_model(name).aliases.items():
            by_version.setdefault(int(version), []).append(alias)
        out = [
            replace(self._to_version(mv), aliases=tuple(sorted(by_version.get(int(mv.version), []))))
            for mv in found
        ]
        return sorted(out, key=lambda v: v.version)

    def models(self) -> list[str]:
        """Names of all registered models."""
        return sorted(m.name for m in self.client.search_registered_models())

    def resolve(self, ref: str) -> ModelVersion:
        """``name@alias`` / ``name/version`` -> the version with a local path to its files.

        Raises:
            RegistryError: unknown model, alias or version, or files that are gone.
        """
        name, alias, version = parse_ref(ref)
        if alias is not None:
            version = self.alias_version(name, alias)
            if version is None:
                known = ", ".join(f"{v.ref} {list(v.aliases)}" for v in self.versions(name)) or "none"
                raise RegistryError(
                    f"{name}@{alias} is not set (versions: {known}). Set it with "
                    f"`llmops registry alias {name} {alias} VERSION --reason ...`."
                )
        assert version is not None
        return self.get_version(name, version, with_path=True)

    def log_run(
        self,
        run_name: str,
        *,
        model_ref: str | None = None,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        artifacts: list[str | Path] = (),
        tags: dict[str, str] | None = None,
    ) -> str:
        """Log a finished run (a report, an evaluation) linked to a registry version.

        ``model_ref`` (``name@alias`` or ``name/version``) is resolved and stored as the tags
        ``llmops.model`` / ``llmops.model_version``, so the version's history lists the run.

        Raises:
            RegistryError: unknown model reference.
        """
        all_tags = dict(tags or {})
        if model_ref:
            name, alias, version = parse_ref(model_ref)
            if alias is not None:
                version = self.alias_version(name, alias)
                if version is None:
                    raise RegistryError(f"{model_ref} is not set; cannot link the run to it.")
            self.get_version(name, version)
            all_tags.update({"llmops.model": name, "llmops.model_version": str(version)})
        run_id = self.client.create_run(self._experiment_id, run_name=run_name, tags=all_tags).info.run_id
        try:
            for k, v in (params or {}).items():
                self.client.log_param(run_id, k, str(v)[:6000])
            for k, v in (metrics or {}).items():
                self.client.log_metric(run_id, k, float(v))
            for path in artifacts:
                self.client.log_artifact(run_id, str(path))
        except Exception:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def start_run(self, run_name: str, *, tags: dict[str, str] | None = None,
                  params: dict[str, Any] | None = None) -> str:
        """Open a run for a long job (a training run) that logs as it goes; close it with :meth:`end_run`."""
        run_id = self.client.create_run(self._experiment_id, run_name=run_name, tags=tags or {}).info.run_id
        for k, v in (params or {}).items():
            self.client.log_param(run_id, k, str(v)[:6000])
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        """Log metrics (at a training step) to an open run."""
        for k, v in metrics.items():
            self.client.log_metric(run_id, k, float(v), step=step or 0)

    def log_dataset(self, run_id: str, name: str, sha256: str, source: str, *, rows: int,
                    context: str = "training") -> None:
        """Record a dataset as an MLflow dataset input of the run (digest = its sha256, shortened to
        MLflow's 36 characters; the full hash is in the profile)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=sha256[:36], source_type="local", source=json.dumps({"uri": source}),
                     profile=json.dumps({"num_rows": rows, "sha256": sha256}))
        self.client.log_inputs(run_id, datasets=[DatasetInput(ds, [InputTag("mlflow.data.context", context)])])

    def end_run(self, run_id: str, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def read_run_artifact(self, run_id: str, path: str) -> str | None:
        """The text of a file logged to a run with :meth:`log_run` (None when the run has no such file)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="llmops-artifact-") as tmp:
            try:
                local = self._mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=self.tracking_uri)
            except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing file
                log.debug("run %s has no artifact %s: %s", run_id, path, e)
                return None
            return Path(local).read_text(encoding="utf-8")

    def runs_for(self, name: str, version: int | None = None) -> list[Any]:
        """Runs logged against a model (and version) with :meth:`log_run`, newest first."""
        flt = f"tags.`llmops.model` = '{name}'"
        if version is not None:
            flt += f" and tags.`llmops.model_version` = '{version}'"
        return self.client.search_runs([self._experiment_id], filter_string=flt,
                                       order_by=["attributes.start_time DESC"])



def _actor() -> str:
    user = os.environ.get("LLMOPS_ACTOR")
    if user:
        return user
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# Types beyond skops' own defaults that the project's scikit-learn models contain (classic_ml's three
# estimators, the injection classifier): the only ones trusted when a registered model is loaded.
SKOPS_TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


def save_sklearn_model(model: Any, path: str | Path, input_example: Any) -> Path:
    """Save a fitted scikit-learn model as an MLflow model folder (signature + input example).

    Raises:
        RegistryError: ``path`` exists already.
    """
    import mlflow.sklearn
    from mlflow.models import infer_signature

    dest = Path(path)
    if dest.exists():
        raise RegistryError(f"{dest} exists; pass an empty location for the model folder.")
    import skops.io

    signature = infer_signature(input_example, model.predict(input_example))
    # MLflow stores sklearn models with skops, which loads only types it is told to trust. We
    # built this model in this process, so the types it contains are the ones to trust.
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    # the requirements are named, not inferred: MLflow's inference loads the model in a subprocess that
    # imports everything installed here (about a minute on 2 cores, per registered model)
    from importlib.metadata import version

    requirements = [f"{name}=={version(name)}" for name in ("scikit-learn", "skops", "numpy", "scipy", "pandas")]
    mlflow.sklearn.save_model(model, str(dest), signature=signature, input_example=input_example,
                              skops_trusted_types=trusted, pip_requirements=requirements)
    return dest


def load_sklearn_model(path: str | Path) -> tuple[Any, list[str] | None]:
    """Load an MLflow scikit-learn model folder; returns (model, input column names or None).

    The model must be stored with skops, and it is loaded trusting only :data:`SKOPS_TRUSTED_TYPES`
    (the project's own list), never the trusted-types list written into the model folder: a version
    someone registered, or an alias moved to it, cannot run code when the gateway loads it.

    Raises:
        RegistryError: not an MLflow scikit-learn model, not stored with skops, or it holds a type
            outside the trusted list.
    """
    import skops.io
    from mlflow.models import Model
    from skops.io.exceptions import UntrustedTypesFoundException

    p = Path(path)
    if not (p / "MLmodel").is_file():
        raise RegistryError(f"{p} is not an MLflow model folder (no MLmodel file).")
    meta = Model.load(str(p / "MLmodel"))
    flavor = meta.flavors.get("sklearn") or {}
    if flavor.get("serialization_format") != "skops" or not flavor.get("pickled_model"):
        raise RegistryError(f"{p} is not a scikit-learn model stored with skops (format "
                            f"{flavor.get('serialization_format')!r}); other formats can run code on load. "
                            "Register it again with this version of the project.")
    try:
        model = skops.io.load(p / flavor["pickled_model"], trusted=list(SKOPS_TRUSTED_TYPES))
    except UntrustedTypesFoundException as e:
        raise RegistryError(f"{p} holds types outside the project's trusted list ({e}); it is not loaded.") from e
    columns = meta.signature.inputs.input_names() if meta.signature is not None else None
    return model, columns
