"""``llmops serve``: vLLM engines behind the OpenAI-compatible gateway.

Examples::

    llmops serve --config configs/serving/default.yaml          # until Ctrl-C
    llmops serve --config configs/serving/default.yaml port=9000 engines.0.kv_cache_gb=4
    llmops serve keys create --id ci                            # a new key (printed once)
    llmops serve keys list | revoke ci
    llmops serve hash-key sk-my-secret                          # the sha256 to put in auth.keys
    llmops serve stop                                           # stop a running server
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, prog: str = "llmops serve") -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "hash-key":
        p = argparse.ArgumentParser(prog=f"{prog} hash-key", description="sha256 of an API key for auth.keys")
        p.add_argument("key")
        from serving.gateway.auth import hash_key

        print(hash_key(p.parse_args(args[1:]).key))
        return 0
    if args and args[0] == "keys":
        return _keys(args[1:], prog)
    if args and args[0] == "stop":
        from serving.server import stop_running

        print("stopped" if stop_running() else "no server running")
        return 0
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                     epilog="Also: `keys list|create|revoke`, `hash-key KEY`, `stop`.")
    parser.add_argument("--config", help="YAML (configs/serving/*.yaml)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback host without chosen keys (logged loudly)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    ns = parser.parse_args(args)

    from llmops.config import load_config
    from serving.config import ServingConfig
    from serving.server import Server

    cfg = load_config(ns.config, ServingConfig, ns.overrides)
    from serving.server import check_exposure, ensure_key

    check_exposure(cfg, ns.insecure)  # before a key is made up for an address it would not be enough for
    created = ensure_key(cfg)
    if created:
        print(f"created API key 'default' (shown once, only its sha256 is kept in {cfg.auth.keys_file}):\n"
              f"  {created}\nmore keys: `llmops serve keys create --id NAME`", flush=True)
    server = Server(cfg, insecure=ns.insecure)
    server.start()
    print(f"gateway: http://{cfg.host}:{cfg.port}/v1  models: {', '.join(server.state.models)}")
    for e in server.engines:
        if e.dtype is None:  # an engine started elsewhere (engines[].url)
            print(f"engine {e.cfg.name}: {e.cfg.served_name} at {e.url} (started elsewhere)")
        else:
            print(f"engine {e.cfg.name}: {e.cfg.served_name} in {e.dtype.dtype} ({e.dtype.reason})")
    server.serve_forever()
    return 0


def _keys(args: list[str], prog: str) -> int:
    """``llmops serve keys list|create|revoke`` on the config's key file."""
    p = argparse.ArgumentParser(prog=f"{prog} keys", description="API keys of the gateway (sha256 kept only)")
    p.add_argument("action", choices=["list", "create", "revoke"])
    p.add_argument("id", nargs="?", help="key id (create, revoke)")
    p.add_argument("--id", dest="id_opt", help="key id (create)")
    p.add_argument("--config", help="serving YAML whose auth.keys_file is used")
    ns = p.parse_args(args)
    from llmops.config import load_config
    from serving.config import ServingConfig
    from serving.gateway.keys import create_key, list_keys, revoke_key

    path = load_config(ns.config, ServingConfig).auth.keys_file
    key_id = ns.id or ns.id_opt
    if ns.action == "list":
        for k in list_keys(path):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created)) if k.created else "-"
            print(f"{k.id:24s} created {when}  sha256 {k.sha256[:12]}...{'  (generated)' if k.generated else ''}")
        return 0
    if not key_id:
        p.error(f"{ns.action} needs a key id")
    if ns.action == "create":
        print(create_key(path, key_id))
        print(f"(shown once; only its sha256 is kept in {path})", file=sys.stderr)
        return 0
    if revoke_key(path, key_id):
        print(f"revoked {key_id}")
        return 0
    print(f"no key {key_id!r} in {path}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    from llmops.cli import run_main

    sys.exit(run_main(main))
