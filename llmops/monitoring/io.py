"""Reading tabular batches in chunks (CSV, Parquet), so large files stream through the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from llmops.errors import LLMOpsError


class DriftInputError(LLMOpsError):
    """A reference/current file that cannot be read (missing, unknown format, unparsable)."""


SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


def chunk_reader(path: str | Path, chunk_rows: int = 100_000) -> Callable[[], Iterator[pd.DataFrame]]:
    """A re-callable source of DataFrame chunks for ``path``; checks the file first.

    Raises:
        DriftInputError: the file is missing, empty or of an unknown format.
    """
    p = Path(path)
    if not p.is_file():
        raise DriftInputError(f"{p} does not exist. Pass a CSV or Parquet file.")
    fmt = SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise DriftInputError(f"{p}: unknown format {p.suffix!r}; use .csv, .tsv or .parquet.")
    if p.stat().st_size == 0:
        raise DriftInputError(f"{p} is an empty file (not even a header).")

    def read() -> Iterator[pd.DataFrame]:
        try:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(p)
                empty = True
                for batch in pf.iter_batches(batch_size=chunk_rows):
                    empty = False
                    yield batch.to_pandas()
                if empty:
                    yield pf.schema_arrow.empty_table().to_pandas()
            else:
                sep = "\t" if p.suffix.lower() == ".tsv" else None
                kwargs = {"sep": sep, "engine": "python"} if sep is None else {"sep": sep}
                if sep is None:
                    # sniff the delimiter on the header line only; the C engine reads the rest
                    header = p.open(encoding="utf-8", errors="replace").readline()
                    kwargs = {"sep": max([",", ";", "\t", "|"], key=header.count)}
                with pd.read_csv(p, chunksize=chunk_rows, low_memory=False, **kwargs) as reader:
                    got = False
                    for chunk in reader:
                        got = True
                        yield chunk
                    if not got:
                        yield pd.read_csv(p, nrows=0, **kwargs)
        except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
            raise DriftInputError(f"{p} cannot be read as {fmt}: {e}") from e

    return read
