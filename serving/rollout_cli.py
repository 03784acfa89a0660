"""``llmops rollout``: put a registry challenger in front of live traffic; watch it; promote or roll back.

The gateways that serve ``NAME@champion`` follow the rollout within ``rollout_poll_s`` and decide it from their
request log (see docs/rollout.md). With no champion yet (a first release), the base model answers the
champion's share under the public name::

    llmops rollout start smollm2-qa --canary 10 --min-requests 200 --max-minutes 60
    llmops rollout start smollm2-qa --canary 0 --shadow 20        # shadow only: nobody sees the challenger
    llmops rollout status smollm2-qa                              # table per version, comparisons, decision
    llmops rollout promote smollm2-qa --reason "looks right"      # by hand, any time (audited)
    llmops rollout rollback smollm2-qa --reason "users complain"
    llmops rollout stop smollm2-qa --reason "paused"              # challenger out of traffic, no alias moves
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, prog: str = "llmops rollout") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--registry-config", default=None, help="registry YAML (default: configs/registry)")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("start", help="start a canary and/or shadow rollout of NAME@challenger")
    p.add_argument("name", help="registered model name (its champion and challenger aliases)")
    p.add_argument("--canary", type=float, default=10, help="percent of users answered by the challenger (10)")
    p.add_argument("--shadow", type=float, default=0, help="percent of the champion's requests mirrored (0)")
    p.add_argument("--min-requests", type=int, default=200, help="challenger requests before a decision (200)")
    p.add_argument("--max-minutes", type=float, default=60, help="without a decision by then: expire (60)")
    p = sub.add_parser("status", help="the rollout, per-version figures and the decision they lead to now")
    p.add_argument("name")
    p.add_argument("--config", default=None, help="serving YAML whose request log to read (default: configs/serving)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    for action, text in (("promote", "make the challenger the champion now"),
                         ("rollback", "take the challenger out of traffic and remove its alias"),
                         ("stop", "take the challenger out of traffic; no alias moves")):
        p = sub.add_parser(action, help=text)
        p.add_argument("name")
        p.add_argument("--reason", required=True, help="why (kept in the audit log)")
    args = parser.parse_args(argv)

    from llmops.config import load_config
    from llmops.registry import Registry, RegistryConfig
    from serving.rollout import RolloutStore, manual, start_rollout

    store = RolloutStore(Registry(load_config(args.registry_config, RegistryConfig)))
    if args.action == "start":
        r = start_rollout(store, args.name, canary=args.canary, shadow=args.shadow, min_requests=args.min_requests,
                          max_minutes=args.max_minutes)
        print(f"rollout {r.id} of {r.name}: v{r.challenger} at {r.canary:g}% canary, {r.shadow:g}% shadow, against "
              f"{r.champion_label}; decided after {r.min_requests} challenger requests or {r.max_minutes:g} min. The "
              "gateways pick it up within rollout_poll_s; `llmops rollout status` shows how it goes.")
        return 0
    if args.action == "status":
        return _status(store, args)
    r = manual(store, args.name, args.action, args.reason)
    print(f"rollout {r.id} of {r.name}: {r.state}: {r.reason}")
    return 0


def _status(store, args) -> int:
    from llmops.config import load_config
    from llmops.contracts import RequestLogError, read_feedback, read_request_log
    from serving.config import ServingConfig
    from serving.rollout import decide, status_table, version_stats

    rollout = store.get(args.name)
    if rollout is None:
        print(f"no rollout of {args.name} was ever started (`llmops rollout start {args.name} --canary 10`)")
        return 1
    cfg = load_config(args.config, ServingConfig)
    models = {a.public_name for a in cfg.adapters if a.registry_name == args.name and a.alias == "champion"}
    models = models or {args.name}
    from serving.gateway.rollouts import STATS_COLUMNS

    try:
        requests = read_request_log(cfg.request_log.path, since=rollout.started, columns=STATS_COLUMNS,
                                    models=sorted(models))
        feedback = read_feedback(cfg.request_log.path, since=rollout.started)
    except RequestLogError as e:
        print(f"note: no figures ({e})", file=sys.stderr)
        requests = feedback = None
    # an ended rollout's figures stop at its end (later traffic of a promoted version is not the rollout's)
    stats = version_stats(requests, rollout, models, feedback, until=None if rollout.running else rollout.ended)
    decision = decide(rollout, stats, cfg.rollout)
    if args.json:
        outcome = ({"action": decision.action, "reason": decision.reason} if rollout.running
                   else {"action": rollout.state, "reason": rollout.reason})
        print(json.dumps({"rollout": json.loads(rollout.to_json()), "champion": decision.champion.row(),
                          "challenger": decision.challenger.row(),
                          "comparisons": [c.__dict__ for c in decision.comparisons],
                          "decision" if rollout.running else "ended": outcome}, indent=2))
    else:
        print(status_table(rollout, decision))
    return 0
