"""The drift engine on seeded data: quiet on same-distribution splits, loud on injected drift,
clear on schema problems, identical verdicts when streamed in chunks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmops.monitoring.engine import DriftConfig, detect_drift


def table(n: int, seed: int, shift: float = 0.0, cat_p=(0.5, 0.3, 0.2)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.normal(40 + shift, 10, n),
        "income": rng.lognormal(10, 0.5, n),
        "segment": rng.choice(["a", "b", "c"], n, p=list(cat_p)),
        "default": rng.integers(0, 2, n),
        "score": rng.uniform(0, 1, n),
    })


@pytest.mark.parametrize("n", [300, 5000])
def test_quiet_on_same_distribution(n):
    false_alarms = 0
    for seed in range(10):
        full = table(2 * n, seed)
        res = detect_drift(full.iloc[:n], full.iloc[n:])
        assert res.status == "ok" and res.dataset_drift is False
        false_alarms += res.n_drifted
    # 50 column tests at p=0.05 / distance 0.1: a handful of alarms at most
    assert false_alarms <= 6


@pytest.mark.parametrize("n", [300, 5000])
def test_detects_injected_drift(n):
    ref = table(n, 1)
    cur = table(n, 2, shift=6.0, cat_p=(0.2, 0.3, 0.5))
    cur["score"] = cur["score"] ** 3
    res = detect_drift(ref, cur)
    drifted = {c.column for c in res.columns if c.drifted}
    assert drifted == {"age", "segment", "score"}
    assert res.dataset_drift is True and res.share_drifted == pytest.approx(0.6)
    tests = {c.column: c.test for c in res.columns}
    if n <= 1000:
        assert tests == {"age": "ks", "income": "ks", "segment": "chi_squared",
                         "default": "chi_squared", "score": "ks"}
    else:
        assert tests["age"] == "wasserstein" and tests["segment"] == "jensen_shannon"


def test_low_cardinality_numeric_is_categorical_and_keys_are_dtype_stable():
    ref = pd.DataFrame({"grade": np.tile([1, 2, 3], 200)})
    cur = pd.DataFrame({"grade": np.tile([1.0, 2.0, 3.0], 200)})  # float now: same categories
    res = detect_drift(ref, cur)
    assert res.columns[0].kind == "categorical" and not res.columns[0].drifted


def test_schema_problems_are_reported_and_never_silent():
    ref = table(500, 3)
    cur = table(500, 4).drop(columns=["income"])
    cur["new_col"] = 1
    cur["age"] = "forty"  # dtype changed to strings
    cur["score"] = np.nan  # all missing now
    res = detect_drift(ref, cur)
    by = {c.column: c for c in res.columns}
    assert res.schema["missing_columns"] == ["income"] and res.schema["added_columns"] == ["new_col"]
    assert res.schema["dtype_changes"][0]["column"] == "age"
    assert by["income"].drifted and by["income"].test == "schema"
    assert by["age"].drifted and "dtype changed" in by["age"].reason
    assert by["score"].drifted and "all values missing in the current" in by["score"].reason
    assert res.dataset_drift is True


def test_constant_and_all_nan_columns():
    ref = pd.DataFrame({"k": [7.0] * 50, "nan": [np.nan] * 50, "x": np.arange(50.0)})
    same = detect_drift(ref, ref.copy())
    assert same.dataset_drift is False
    by = {c.column: c for c in same.columns}
    assert not by["k"].drifted and not by["nan"].drifted and "not testable" in by["nan"].reason
    cur = ref.copy()
    cur["k"] = 8.0
    assert {c.column: c.drifted for c in detect_drift(ref, cur).columns}["k"] is True


def test_missing_share_rise_is_drift():
    ref = table(2000, 5)
    cur = table(2000, 6)
    cur.loc[cur.index[:600], "income"] = np.nan
    by = {c.column: c for c in detect_drift(ref, cur).columns}
    assert by["income"].drifted and "missing share rose" in by["income"].reason
    assert by["income"].missing_share_current == pytest.approx(0.3)


def test_empty_batch_is_invalid_not_no_drift():
    ref = table(100, 1)
    res = detect_drift(ref, ref.iloc[:0])
    assert res.status == "invalid" and res.dataset_drift is None
    assert "the current batch is empty" in res.schema["problems"]


def test_prediction_column_reported_separately():
    ref, cur = table(400, 1), table(400, 2, shift=8)
    res = detect_drift(ref, cur, DriftConfig(prediction_column="age"))
    assert res.prediction_drift is not None and res.prediction_drift.drifted
    assert "age" not in {c.column for c in res.columns}


def test_config_choices_and_overrides():
    ref, cur = table(3000, 1), table(3000, 2, shift=1.5)
    cfg = DriftConfig(numeric_test="psi", per_column={"age": {"test": "ks", "threshold": 0.01}},
                      exclude=["income"])
    by = {c.column: c for c in detect_drift(ref, cur, cfg).columns}
    assert "income" not in by
    assert by["age"].test == "ks" and by["age"].threshold == 0.01
    assert by["score"].test == "psi"
    with pytest.raises(ValueError):
        DriftConfig(thresholds={"magic": 0.1})


def test_streamed_chunks_give_the_same_verdicts():
    ref, cur = table(60_000, 1), table(60_000, 2, shift=3.0, cat_p=(0.4, 0.3, 0.3))

    def chunks(df):
        return lambda: (df.iloc[i:i + 7000] for i in range(0, len(df), 7000))

    whole = detect_drift(ref, cur, DriftConfig())
    streamed = detect_drift(chunks(ref), chunks(cur), DriftConfig(exact_max_rows=5000))
    assert {c.method for c in streamed.columns if c.kind == "numeric"} == {"binned"}
    for a, b in zip(whole.columns, streamed.columns, strict=True):
        assert a.column == b.column and a.test == b.test and a.drifted == b.drifted
        assert b.statistic == pytest.approx(a.statistic, rel=0.1, abs=0.01)
