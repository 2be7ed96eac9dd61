"""The extract contract: a source yields raw record chunks whose columns already carry canonical names."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd


@dataclass(frozen=True, eq=False)
class RecordChunk:
    """A slice of raw rows read from one source file (or table, or listing).

    ``frame`` holds the rows as read (CSV values are all strings), columns already renamed to
    canonical names, with a fresh 0-based ``RangeIndex``. ``source`` names where the rows came
    from as a user would recognise it (``s3://bucket/m/a.csv``, a local path) and never contains
    a secret. ``first_row`` is the 1-based number of the chunk's first data row within
    ``source`` (a header is not counted), so row ``i`` of ``frame`` is row ``first_row + i``.

    Equality is identity (``eq=False``): comparing data frames element-wise is not meaningful here.
    """

    frame: pd.DataFrame
    source: str
    first_row: int
    rows: np.ndarray | None = None
    rejects: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.first_row < 1:
            raise ValueError(f"first_row is 1-based, got {self.first_row}")
        if self.rows is not None and len(self.rows) != len(self.frame):
            raise ValueError("rows must give one number per row of frame")

    def row_numbers(self) -> np.ndarray:
        """The 1-based row number of each row of ``frame`` (int64)."""
        if self.rows is not None:
            return np.asarray(self.rows, dtype=np.int64)
        return np.arange(self.first_row, self.first_row + len(self.frame), dtype=np.int64)

    @property
    def rows_read(self) -> int:
        """Rows of the source this chunk stands for: parsed plus rejected while parsing."""
        return len(self.frame) + (len(self.rejects) if self.rejects is not None else 0)


@runtime_checkable
class Source(Protocol):
    """Anything that can stream raw asset rows: manifests, SQL tables, bucket or vendor listings."""

    def chunks(self, chunk_rows: int = 10_000) -> Iterator[RecordChunk]:
        """Yield chunks of at most ``chunk_rows`` rows, in source order, holding one chunk in memory.

        Raises ``ConfigError`` when the source cannot be read as configured (missing, unparsable).
        """
        ...

    def describe(self) -> str:
        """One line for logs naming the source; never contains secrets such as storage option values."""
        ...
