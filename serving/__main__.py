"""``llmops serve``: vLLM engines behind the OpenAI-compatible gateway.

Examples::

    llmops serve --config configs/serving/default.yaml          # until Ctrl-C
    llmops serve --config configs/serving/default.yaml port=9000 engines.0.kv_cache_gb=4
    llmops serve hash-key sk-my-secret                          # the sha256 to put in auth.keys
    llmops serve stop                                           # stop a running server
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, prog: str = "llmops serve") -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "hash-key":
        p = argparse.ArgumentParser(prog=f"{prog} hash-key", description="sha256 of an API key for auth.keys")
        p.add_argument("key")
        from serving.gateway.auth import hash_key

        print(hash_key(p.parse_args(args[1:]).key))
        return 0
    if args and args[0] == "stop":
        from serving.server import stop_running

        print("stopped" if stop_running() else "no server running")
        return 0
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                     epilog="Also: `hash-key KEY`, `stop`.")
    parser.add_argument("--config", help="YAML (configs/serving/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    ns = parser.parse_args(args)

    from llmops.config import load_config
    from serving.config import ServingConfig
    from serving.server import Server

    cfg = load_config(ns.config, ServingConfig, ns.overrides)
    server = Server(cfg)
    server.start()
    print(f"gateway: http://{cfg.host}:{cfg.port}/v1  models: {', '.join(server.state.models)}")
    for e in server.engines:
        print(f"engine {e.cfg.name}: {e.cfg.served_name} in {e.dtype.dtype} ({e.dtype.reason})")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    from llmops.cli import run_main

    sys.exit(run_main(main))
