"""``llmops registry``: inspect the registry, resolve references, move aliases, read the audit log.

Example::

    llmops registry models
    llmops registry versions smollm2-135m-instruct
    llmops registry resolve demo-adapter@champion
    llmops registry alias demo-adapter champion 3 --reason "eval gate passed"
    llmops registry audit demo-adapter
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, prog: str = "llmops registry") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="registry YAML (default: configs/registry)")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("models", help="list registered models")
    p = sub.add_parser("versions", help="list versions of a model with aliases and lineage")
    p.add_argument("name")
    p = sub.add_parser("resolve", help="print the local path of name@alias or name/version")
    p.add_argument("ref")
    p = sub.add_parser("alias", help="point name@alias at a version (audited)")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("version", type=int)
    p.add_argument("--reason", required=True, help="why (kept in the audit log)")
    p = sub.add_parser("audit", help="alias moves, oldest first")
    p.add_argument("name", nargs="?")
    args = parser.parse_args(argv)

    from llmops.config import load_config
    from llmops.registry import Registry, RegistryConfig

    reg = Registry(load_config(args.config, RegistryConfig))
    if args.action == "models":
        for name in reg.models():
            print(name)
    elif args.action == "versions":
        for v in reg.versions(args.name):
            lineage = {k: val for k, val in v.tags.items() if k.startswith("lineage.")}
            print(f"{v.ref}\t{v.kind}\taliases={','.join(v.aliases) or '-'}\t{json.dumps(lineage)}")
    elif args.action == "resolve":
        print(reg.resolve(args.ref).local_path)
    elif args.action == "alias":
        m = reg.set_alias(args.name, args.alias, args.version, reason=args.reason)
        print(f"{m.name}@{m.alias}: {m.from_version} -> {m.to_version}")
    elif args.action == "audit":
        for m in reg.audit(args.name):
            when = dt.datetime.fromtimestamp(m.timestamp, dt.UTC).isoformat(timespec="seconds")
            print(f"{when}\t{m.name}@{m.alias}\t{m.from_version} -> {m.to_version}\t{m.actor}\t{m.reason}")
    return 0


if __name__ == "__main__":
    from llmops.cli import run_main

    sys.exit(run_main(main))
