"""Drift benchmark: our engine against Evidently's DataDriftPreset on the same data, same run.

1,000,000 rows x 20 columns (14 numeric, 6 categorical; 5 numeric and 2 categorical columns
drifted) as Parquet. Each side runs in its own process (time and peak RSS of the whole
process); Evidently lives in its own virtualenv (.venv-bench, made by `make bench`) so it never
enters the project's dependency set. Writes benchmarks/results/drift.json and drift.md; goals:
at least 10x faster than Evidently, under 10 s, same per-column verdicts where the tests match.

    python benchmarks/drift.py                      # needs .venv-bench (make bench creates it)
    python benchmarks/drift.py --rows 200000        # smaller
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file shares its name with a project package: import the package, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
RESULTS = ROOT / "benchmarks" / "results"
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"


def make_data(rows: int, out: Path) -> None:
    import numpy as np
    import pandas as pd

    def table(seed: int, drift: bool) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        cols = {}
        for i in range(14):
            shift = 0.3 if drift and i < 5 else 0.0
            cols[f"num_{i}"] = (rng.normal(shift, 1, rows) if i % 2 else rng.lognormal(shift, 0.5, rows))
        for i in range(6):
            p = np.array([0.4, 0.3, 0.2, 0.1])
            if drift and i < 2:
                p = np.array([0.1, 0.2, 0.3, 0.4])
            cols[f"cat_{i}"] = rng.choice(["a", "b", "c", "d"], rows, p=p)
        return pd.DataFrame(cols)

    table(0, False).to_parquet(out / "reference.parquet")
    table(1, True).to_parquet(out / "current.parquet")


def run_ours(ref: str, cur: str, result: str) -> None:
    from llmops.monitoring.engine import DriftConfig, detect_drift
    from llmops.monitoring.io import chunk_reader
    from llmops.monitoring.report import write_report

    t = time.perf_counter()
    cfg = DriftConfig()
    res = detect_drift(chunk_reader(ref, cfg.chunk_rows), chunk_reader(cur, cfg.chunk_rows), cfg)
    write_report(res, Path(result).parent / "ours")
    elapsed = time.perf_counter() - t
    verdicts = {c.column: {"test": c.test, "value": c.statistic, "drifted": c.drifted} for c in res.columns}
    _dump(result, elapsed, verdicts)


def run_evidently(ref: str, cur: str, result: str) -> None:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    t = time.perf_counter()
    reference, current = pd.read_parquet(ref), pd.read_parquet(cur)
    snapshot = Report([DataDriftPreset()]).run(current, reference)
    snapshot.save_html(str(Path(result).parent / "evidently.html"))
    elapsed = time.perf_counter() - t
    verdicts = {}
    for m in snapshot.dict()["metrics"]:
        conf = m.get("config", {})
        if conf.get("type", "").endswith("ValueDrift"):
            method, thr, value = conf["method"], conf["threshold"], m["value"]
            drifted = value < thr if "p_value" in method else value >= thr
            verdicts[conf["column"]] = {"test": method, "value": value, "drifted": bool(drifted)}
    _dump(result, elapsed, verdicts)


def _dump(result: str, elapsed: float, verdicts: dict) -> None:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(result).write_text(json.dumps({"seconds": elapsed, "peak_rss_mb": peak_mb, "verdicts": verdicts}))


SAME_TEST = {"wasserstein": "Wasserstein distance (normed)", "jensen_shannon": "Jensen-Shannon distance",
             "ks": "K-S p_value", "chi_squared": "chi-square p_value"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    a = p.parse_args()
    if not BENCH_PY.exists():
        sys.exit("Evidently's virtualenv is missing: run `make bench` (it creates .venv-bench).")
    tmp = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    print(f"generating {a.rows:,} rows x 20 columns ...", flush=True)
    make_data(a.rows, tmp)
    runs = {}
    for name, python in (("ours", sys.executable), ("evidently", str(BENCH_PY))):
        print(f"running {name} ...", flush=True)
        out = tmp / f"{name}.json"
        subprocess.run([python, __file__, f"--run-{name}", str(tmp / "reference.parquet"),
                        str(tmp / "current.parquet"), str(out)], check=True, cwd=ROOT)
        runs[name] = json.loads(out.read_text())
    ours, ev = runs["ours"], runs["evidently"]
    compared = agree = 0
    rows = []
    for col, o in ours["verdicts"].items():
        e = ev["verdicts"].get(col)
        same = e is not None and SAME_TEST.get(o["test"]) == e["test"]
        if same:
            compared += 1
            agree += o["drifted"] == e["drifted"]
        rows.append((col, o, e, same))
    speedup = ev["seconds"] / ours["seconds"]
    goals = {
        "speedup_vs_evidently": {"value": round(speedup, 1), "goal": ">= 10", "met": speedup >= 10},
        "seconds": {"value": round(ours["seconds"], 2), "goal": "< 10", "met": ours["seconds"] < 10},
        "verdict_agreement": {"value": f"{agree}/{compared}", "goal": "all", "met": agree == compared > 0},
    }
    payload = {"rows": a.rows, "columns": 20, "ours": {k: ours[k] for k in ("seconds", "peak_rss_mb")},
               "evidently": {k: ev[k] for k in ("seconds", "peak_rss_mb")}, "goals": goals,
               "columns_detail": {c: {"ours": o, "evidently": e, "same_test": s} for c, o, e, s in rows}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "drift.json").write_text(json.dumps(payload, indent=2, default=str))
    md = [f"# Drift benchmark: {a.rows:,} rows x 20 columns", "",
          "| engine | seconds | peak RSS MB |", "| --- | --- | --- |",
          f"| llmops | {ours['seconds']:.2f} | {ours['peak_rss_mb']:.0f} |",
          f"| Evidently (DataDriftPreset) | {ev['seconds']:.2f} | {ev['peak_rss_mb']:.0f} |", "",
          "| goal | value | target | met |", "| --- | --- | --- | --- |"]
    md += [f"| {k} | {v['value']} | {v['goal']} | {'yes' if v['met'] else 'NO'} |" for k, v in goals.items()]
    md += ["", "| column | our test | ours | Evidently test | Evidently | agree |",
           "| --- | --- | --- | --- | --- | --- |"]
    for col, o, e, same in rows:
        md.append(f"| {col} | {o['test']} | {o['value']:.4f} {'drift' if o['drifted'] else 'ok'} | "
                  f"{e['test'] if e else '-'} | {e['value']:.4f} {'drift' if e['drifted'] else 'ok'} | "
                  f"{('yes' if o['drifted'] == e['drifted'] else 'NO') if same else 'n/a'} |" if e else
                  f"| {col} | {o['test']} | {o['value']} | - | - | n/a |")
    (RESULTS / "drift.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] in ("--run-ours", "--run-evidently"):
        {"--run-ours": run_ours, "--run-evidently": run_evidently}[sys.argv[1]](*sys.argv[2:])
    else:
        main()
