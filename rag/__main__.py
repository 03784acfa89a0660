"""``llmops rag``: ingest documents into Qdrant, retrieve chunks, answer with citations.

Examples::

    llmops rag ingest                                   # the config's sources (docs/) into data/rag/qdrant
    llmops rag ingest docs/ more/notes.pdf --tenant acme
    llmops rag query "Which port does the gateway use?" --mode hybrid --top-k 5
    llmops rag ask "How do I rotate an API key?"        # through the gateway (generation.base_url)
    llmops rag stats
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

DEFAULT_CONFIG = "configs/rag/default.yaml"


def main(argv: Sequence[str] | None = None, prog: str = "llmops rag") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for name, help_text in (("ingest", "index files/folders incrementally"), ("query", "show retrieved chunks"),
                            ("ask", "answer a question with citations"), ("stats", "what the index holds")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML (default {DEFAULT_CONFIG})")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, repeatable (e.g. --set retrieval.top_k=3)")
        if name in ("ingest", "query", "ask"):
            p.add_argument("--tenant", default=None, help="tenant of the chunks / the query")
        if name == "ingest":
            p.add_argument("paths", nargs="*", help="files or folders (default: the config's sources); "
                           "key=value items are config overrides")
            p.add_argument("--keep-missing", action="store_true", help="do not delete chunks of removed files")
        if name in ("query", "ask"):
            p.add_argument("question")
            p.add_argument("--top-k", type=int, default=None)
        if name == "query":
            p.add_argument("--mode", choices=["dense", "sparse", "hybrid"], default=None)
    args = parser.parse_args(argv)
    if args.action == "ingest":  # `make rag-ingest ARGS="chunking.chunk_tokens=120"` passes overrides here
        from pathlib import Path

        args.overrides += [p for p in args.paths if "=" in p and not Path(p).exists()]
        args.paths = [p for p in args.paths if p not in args.overrides]

    from rag.pipeline import RAGPipeline

    rag = RAGPipeline.from_config(args.config, args.overrides)
    if args.action == "ingest":
        report = rag.ingest(args.paths or None, tenant=args.tenant, delete_missing=not args.keep_missing)
        print(report.summary())
        return 1 if report.failed else 0
    if args.action == "query":
        for i, h in enumerate(rag.retrieve(args.question, tenant=args.tenant, top_k=args.top_k, mode=args.mode), 1):
            snippet = " ".join(h.text.split())[:160]
            print(f"[{i}] {h.score:.4f} {h.source} ({h.id[:8]}) {snippet}")
        return 0
    if args.action == "ask":
        ans = rag.ask(args.question, tenant=args.tenant, top_k=args.top_k)
        for v in ans.guardrails:
            if v.action != "allow":
                print(f"  guardrails {v.stage}: {v.action} by {v.rail} ({v.reason})")
        if ans.question != args.question:
            print(f"  the model saw: {ans.question}")
        print(ans.text)
        for c in ans.citations:
            print(f"  [{c.number}] {c.source} chunk {c.chunk_id[:8]} score {c.score:.4f}")
        if ans.no_answer:
            print("  (no answer from the indexed documents)")
        return 0
    print(json.dumps({k: v for k, v in rag.manifest().items() if k != "files"} | {
        "files": len(rag.manifest()["files"])}, indent=2))
    return 0


if __name__ == "__main__":
    from llmops.cli import run_main

    sys.exit(run_main(main))
