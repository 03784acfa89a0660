"""Incremental ingestion: files -> text -> token-sized chunks -> dense + sparse vectors -> Qdrant.

Chunk ids are derived from (tenant, source, chunk text, occurrence), so re-ingesting is incremental
and idempotent: unchanged files are skipped, changed files have their new chunks upserted and their
stale chunks deleted, and chunks of deleted files are removed. Qdrant itself is the manifest: every
point carries its file's sha256 and chunk count, so a file whose chunks are incomplete (an
interrupted run) is ingested again and the index converges. Example::

    report = ingest(["docs"], store, embedder, ChunkingConfig())
    print(report.summary())
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from llmops.config import StrictModel
from llmops.errors import LLMOpsError
from rag.embed import Embedder, bm25_vector
from rag.store import Store

log = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("5b7c1a52-4f0e-4d55-9a53-2a2b7f0c9e11")
KINDS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".rst": "text", ".html": "html",
         ".htm": "html", ".pdf": "pdf"}


class IngestError(LLMOpsError):
    """Ingestion cannot run as asked."""


class SkipFile(Exception):  # noqa: N818 - a control-flow signal, not an error for the user
    """A file that is not ingested; the message is the reason shown in the report."""


class ChunkingConfig(StrictModel):
    """How documents are split."""

    chunk_tokens: int = Field(200, ge=16, description="Chunk size in tokens of the embedding model.")
    overlap_tokens: int = Field(30, ge=0, description="Tokens shared by consecutive chunks.")
    markdown_headers: bool = Field(True, description="Split Markdown at #/##/### headings first.")
    max_file_mb: float = Field(50.0, gt=0, description="Larger files are skipped (listed in the report).")


@dataclass
class IngestReport:
    """What one ingest run did."""

    files_seen: int = 0
    indexed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    flagged: list[tuple[str, int]] = field(default_factory=list)  # (source, chunk index): planted instructions

    @property
    def changed(self) -> bool:
        return bool(self.indexed or self.deleted or self.chunks_removed)

    def summary(self) -> str:
        lines = [f"{self.files_seen} files: {len(self.indexed)} indexed, {len(self.unchanged)} unchanged, "
                 f"{len(self.deleted)} deleted, {len(self.skipped)} skipped, {len(self.failed)} failed; chunks "
                 f"+{self.chunks_added} -{self.chunks_removed} = {self.chunks_total} in {self.seconds:.1f} s"]
        if self.flagged:
            lines.append(f"  {len(self.flagged)} chunks flagged for instructions to an assistant (payload "
                         "planted_instructions; RAGPipeline leaves them out of prompts): "
                         + ", ".join(f"{s}#{i}" for s, i in self.flagged[:5])
                         + (" ..." if len(self.flagged) > 5 else ""))
        lines += [f"  skipped {s}: {r}" for s, r in self.skipped]
        lines += [f"  FAILED {s}: {r}" for s, r in self.failed]
        return "\n".join(lines)


# ------------------------------------------------------------------ reading
def read_text(path: Path) -> str:
    """The text of a Markdown / text / HTML / PDF file.

    Raises:
        SkipFile: binary, not UTF-8, unparseable or empty.
    """
    kind = KINDS.get(path.suffix.lower())
    if kind == "pdf":
        text = _read_pdf(path)
    else:
        raw = path.read_bytes()
        if b"\x00" in raw[:8192]:
            raise SkipFile("binary content (NUL bytes)")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise SkipFile(f"not UTF-8 (byte {e.start})") from e
        if kind == "html":
            text = _html_text(text)
    text = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n")).strip()
    if not text:
        raise SkipFile("empty (no text)")
    return text


def _html_text(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    for level in range(1, 4):  # keep headings as Markdown so the header splitter sees them
        for h in soup.find_all(f"h{level}"):
            h.replace_with(f"\n{'#' * level} {h.get_text(' ', strip=True)}\n")
    return soup.get_text("\n")


def _read_pdf(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise SkipFile("encrypted PDF")
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (PdfReadError, ValueError, KeyError, OSError) as e:
        raise SkipFile(f"unreadable PDF ({e})") from e


# ----------------------------------------------------------------- chunking
@dataclass(frozen=True)
class Chunk:
    text: str
    section: str  # heading path, "" when none


def _token_splitter(embedder: Embedder, cfg: ChunkingConfig) -> Any:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    tokenizer = getattr(embedder, "tokenizer", None)
    if tokenizer is not None:
        return RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            tokenizer, chunk_size=cfg.chunk_tokens, chunk_overlap=min(cfg.overlap_tokens, cfg.chunk_tokens // 2))
    return RecursiveCharacterTextSplitter(chunk_size=cfg.chunk_tokens,
                                          chunk_overlap=min(cfg.overlap_tokens, cfg.chunk_tokens // 2),
                                          length_function=embedder.count_tokens)


def chunk_text(text: str, kind: str, embedder: Embedder, cfg: ChunkingConfig) -> list[Chunk]:
    """Split a document: Markdown headings first (when enabled), then token-sized pieces."""
    splitter = _token_splitter(embedder, cfg)
    sections: list[tuple[str, str]] = []
    if kind in ("markdown", "html") and cfg.markdown_headers:
        from langchain_text_splitters import MarkdownHeaderTextSplitter

        md = MarkdownHeaderTextSplitter([("#", "h1"), ("##", "h2"), ("###", "h3")], strip_headers=False)
        for doc in md.split_text(text):
            path = " > ".join(doc.metadata[k] for k in ("h1", "h2", "h3") if k in doc.metadata)
            sections.append((path, doc.page_content))
    else:
        sections.append(("", text))
    return [Chunk(piece.strip(), section) for section, body in sections for piece in splitter.split_text(body)
            if piece.strip()]


def chunk_id(tenant: str | None, source: str, text: str, occurrence: int) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return str(uuid.uuid5(NAMESPACE, f"{tenant or ''}|{source}|{digest}|{occurrence}"))


# ------------------------------------------------------------------- ingest
def collect_files(paths: list[str | Path]) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """``([(path, source key)], [(path, reason)])`` for the supported files under ``paths``."""
    found, skipped = [], []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise IngestError(f"{root} does not exist; pass files or folders of .md, .txt, .html or .pdf.")
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        inside = root.resolve()
        for p in files:
            if p.name.startswith(".") or any(part.startswith(".") for part in p.parts[:-1] if part not in (".", "..")):
                continue
            if root.is_dir() and not p.resolve().is_relative_to(inside):
                # a symlink out of the folder given: its target was not chosen for the index
                skipped.append((_shown(p), f"links outside {root} (to {p.resolve()}); not followed"))
                continue
            if p.suffix.lower() not in KINDS:
                skipped.append((source_key(p), f"unsupported type {p.suffix or '(none)'}"))
                continue
            found.append((p, source_key(p)))
    return found, skipped


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it, without following links."""
    try:
        return path.absolute().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.absolute().as_posix()


def source_key(path: Path) -> str:
    """The source name stored with chunks: relative to the working directory when inside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def _existing(store: Store, tenant: str | None) -> dict[str, dict[str, Any]]:
    """Per source of this tenant: its point ids, file hashes and recorded chunk count."""
    groups: dict[str, dict[str, Any]] = {}
    if not store.exists():
        return groups
    for pid, pl in store.payloads(["source", "tenant", "file_sha256", "n_chunks"]).items():
        if pl.get("tenant") != tenant:
            continue
        g = groups.setdefault(pl.get("source", ""), {"ids": set(), "sha": set(), "n": set()})
        g["ids"].add(pid)
        g["sha"].add(pl.get("file_sha256"))
        g["n"].add(pl.get("n_chunks"))
    return groups


def _complete(group: dict[str, Any] | None, sha: str) -> bool:
    return bool(group) and group["sha"] == {sha} and group["n"] == {len(group["ids"])}


def ingest(paths: list[str | Path], store: Store, embedder: Embedder, cfg: ChunkingConfig, *,
           tenant: str | None = None, delete_missing: bool = True,
           on_file: Callable[[str], None] | None = None,
           flag: Callable[[str], bool] | None = None) -> IngestReport:
    """Bring the collection in line with the files under ``paths`` (for one tenant).

    Args:
        paths: files and folders to index.
        store: the target collection (created on first use for the embedder's model).
        embedder: dense embedding model; its identity must match the collection's.
        cfg: chunking settings.
        tenant: tenant the chunks belong to (stored in the payload and filtered on at query time).
        delete_missing: remove chunks of files that were under a folder in ``paths`` and are gone.
        on_file: called with each source before it is written (tests use it to interrupt a run).
        flag: ``text -> True`` for a chunk that carries instructions to an assistant (the guardrails' injection
            rail, judging the chunk as data); such chunks get ``planted_instructions: true`` in their payload
            and are listed in the report.

    Raises:
        IngestError: a path does not exist. StoreError: the collection belongs to another model.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    report = IngestReport()
    files, report.skipped = collect_files(paths)
    report.files_seen = len(files) + len(report.skipped)
    store.ensure_collection(embedder.dim, embedder.model_id)
    existing = _existing(store, tenant)
    seen: set[str] = set()
    for path, source in tqdm(files, desc="ingesting", unit="file", disable=len(files) < 2):
        seen.add(source)
        group = existing.get(source)
        if path.stat().st_size > cfg.max_file_mb * 2**20:
            report.skipped.append((source, f"larger than chunking.max_file_mb={cfg.max_file_mb}"))
            continue
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if _complete(group, sha):
            report.unchanged.append(source)
            continue
        old_ids = group["ids"] if group else set()
        try:
            chunks = chunk_text(read_text(path), KINDS[path.suffix.lower()], embedder, cfg)
            if not chunks:
                raise SkipFile("no text after chunking")
        except SkipFile as e:
            report.skipped.append((source, str(e)))
            if old_ids:  # the file is no longer usable: its old chunks go too
                store.delete_ids(sorted(old_ids))
                report.chunks_removed += len(old_ids)
            continue
        points = _points(chunks, source, sha, tenant, path, embedder)
        if flag is not None:
            for p in points:
                if flag(p["payload"]["text"]):
                    p["payload"]["planted_instructions"] = True
                    report.flagged.append((source, p["payload"]["chunk_index"]))
        new_ids = {p["id"] for p in points}
        if on_file:
            on_file(source)
        try:
            # kept chunks are upserted too: their payload (file hash, position) is refreshed
            store.upsert(points)
        except Exception as e:  # noqa: BLE001 - undo this file's new points, keep going, report it
            store.delete_ids(sorted(new_ids - old_ids))
            report.failed.append((source, f"{type(e).__name__}: {e}"))
            continue
        stale = old_ids - new_ids
        if stale:
            store.delete_ids(sorted(stale))
        report.indexed.append(source)
        report.chunks_added += len(new_ids - old_ids)
        report.chunks_removed += len(stale)
    if delete_missing:
        roots = [source_key(Path(p)) for p in paths if Path(p).is_dir()]
        for source, group in existing.items():
            if source not in seen and any(source == r or source.startswith(r.rstrip("/") + "/") for r in roots):
                store.delete_ids(sorted(group["ids"]))
                report.deleted.append(source)
                report.chunks_removed += len(group["ids"])
    report.chunks_total = store.count({"tenant": tenant} if tenant else None)
    report.seconds = time.perf_counter() - t0
    log.info("ingest: %s", report.summary().splitlines()[0])
    return report


def _points(chunks: list[Chunk], source: str, sha: str, tenant: str | None, path: Path,
            embedder: Embedder) -> list[dict[str, Any]]:
    # What is embedded carries the section heading, so a chunk deep in a section still matches
    # questions about the section's topic.
    texts = [c.text if not c.section or c.text.startswith("#") else f"{c.section}\n{c.text}" for c in chunks]
    dense = embedder.embed(texts)
    seen: dict[str, int] = {}
    points = []
    for i, (c, vec, text) in enumerate(zip(chunks, dense, texts, strict=True)):
        occurrence = seen.get(c.text, 0)
        seen[c.text] = occurrence + 1
        points.append({
            "id": chunk_id(tenant, source, c.text, occurrence),
            "dense": vec,
            "sparse": bm25_vector(text),
            "payload": {"text": c.text, "source": source, "section": c.section, "chunk_index": i,
                        "n_chunks": len(chunks), "file_sha256": sha, "tenant": tenant,
                        "kind": KINDS[path.suffix.lower()]},
        })
    return points
