"""Tabular data for the classic pipeline: a generated credit-risk table, files, or sklearn sets.

The generator is seeded and can shift its distributions, so the demo and the tests have a
reference batch and a drifted one::

    from classic_ml.data import credit_risk
    train = credit_risk(5000, seed=0)
    shifted = credit_risk(2000, seed=1, shift=1.0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llmops.errors import LLMOpsError


class DataError(LLMOpsError):
    """Tabular input that cannot be used (missing file, columns or target)."""


def credit_risk(n: int, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    """A credit-risk style table with numeric and categorical columns and a ``default`` label.

    ``shift`` in [0, 1+] moves the population: lower incomes, younger applicants, more debt
    consolidation loans and more missing employment data (0 = the reference population).
    """
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(41 - 6 * shift, 11, n), 18, 90).round()
    income = rng.lognormal(10.9 - 0.35 * shift, 0.45, n).round(-2)
    employment = rng.choice(["salaried", "self_employed", "contract", "unemployed"], n,
                            p=_mix([0.62, 0.18, 0.14, 0.06], [0.45, 0.2, 0.2, 0.15], shift))
    home = rng.choice(["own", "mortgage", "rent"], n, p=[0.25, 0.4, 0.35])
    purpose = rng.choice(["car", "home_improvement", "debt_consolidation", "education", "other"], n,
                         p=_mix([0.25, 0.2, 0.3, 0.1, 0.15], [0.1, 0.1, 0.6, 0.1, 0.1], shift))
    loan = np.clip(rng.lognormal(9.3 + 0.2 * shift, 0.6, n), 500, 100_000).round(-1)
    term = rng.choice([12, 24, 36, 48, 60], n, p=[0.1, 0.2, 0.35, 0.15, 0.2])
    credit_score = np.clip(rng.normal(680 - 25 * shift, 60, n), 300, 850).round()
    dti = np.clip(rng.beta(2, 5, n) + 0.08 * shift, 0, 1.5).round(3)
    years_employed = np.clip(rng.exponential(6, n), 0, 45).round(1)
    years_employed[employment == "unemployed"] = 0.0
    logit = (-1.2 - 0.012 * (credit_score - 680) + 2.2 * (dti - 0.3) + 0.35 * np.log(loan / income * 10)
             + 0.9 * (employment == "unemployed") + 0.3 * (purpose == "debt_consolidation")
             - 0.01 * (age - 40) + 0.004 * (term - 36))
    default = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    df = pd.DataFrame({
        "age": age, "income": income, "employment_type": employment, "home_ownership": home,
        "loan_purpose": purpose, "loan_amount": loan, "loan_term_months": term,
        "credit_score": credit_score, "debt_to_income": dti, "years_employed": years_employed,
        "default": default,
    })
    if shift > 0:  # data quality erodes too
        gone = rng.random(n) < min(0.15 * shift, 0.9)
        df.loc[gone, "years_employed"] = np.nan
    return df


def _mix(base: list[float], shifted: list[float], shift: float) -> list[float]:
    w = min(max(shift, 0.0), 1.0)
    p = np.array(base) * (1 - w) + np.array(shifted) * w
    return (p / p.sum()).tolist()


def load_table(source: str, n: int = 5000, seed: int = 0) -> pd.DataFrame:
    """``generate:credit_risk``, ``sklearn:<name>`` (breast_cancer, wine...) or a CSV/Parquet path.

    Raises:
        DataError: unknown source, missing or unreadable file.
    """
    if source == "generate:credit_risk":
        return credit_risk(n, seed)
    if source.startswith("sklearn:"):
        import sklearn.datasets as skd

        name = source.split(":", 1)[1]
        loader = getattr(skd, f"load_{name}", None)
        if loader is None:
            raise DataError(f"scikit-learn has no bundled dataset {name!r} (try breast_cancer).")
        bunch = loader(as_frame=True)
        return bunch.frame.rename(columns={"target": "target"})
    return read_table(source)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file. Raises DataError with the fix on failure."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p} does not exist.")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(p)
        if p.suffix.lower() in (".csv", ".tsv"):
            return pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",")
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p} cannot be read: {e}") from e
    raise DataError(f"{p}: unknown format {p.suffix!r}; use .csv, .tsv or .parquet.")


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write CSV or Parquet by suffix, atomically (a temp file renamed into place)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    if p.suffix.lower() in (".parquet", ".pq"):
        df.to_parquet(tmp, index=False)
    elif p.suffix.lower() == ".csv":
        df.to_csv(tmp, index=False)
    else:
        raise DataError(f"{p}: unknown output format {p.suffix!r}; use .csv or .parquet.")
    tmp.replace(p)
    return p
