"""Small DuckDB helpers of the protein table: the raw-record schema, chunked inserts, literals."""
from __future__ import annotations

import pandas as pd

FASTA, LABEL, GROUP_FILE = 0, 1, 2  # kinds of raw records, in the order they are read


CHUNK = 50_000  # records per insert while reading


RAW = [
    "ord",
    "kind",
    "file",
    "id",
    "description",
    "organism",
    "taxid",
    "kingdom",
    "lineage",
    "structure",
    "chain",
    "source",
    "sequence",
]


FILLED = (
    "description",
    "organism",
    "kingdom",
    "lineage",
    "structure",
    "chain",
)  # filled from later records of the sequence


def _first(result) -> tuple | None:
    """The first row of a result, which is read to its end (DuckDB 2 refuses new work on a
    connection with an unfinished result)."""
    rows = result.fetchall()
    return rows[0] if rows else None


def _insert(con, table: str, rows: list[tuple], columns: list[str], select: str = "*") -> None:
    if rows:
        con.register("_chunk", pd.DataFrame(rows, columns=columns))
        con.execute(f"INSERT INTO {table} SELECT {select} FROM _chunk")
        con.unregister("_chunk")
        rows.clear()


class _Raw:
    """Raw records appended in reading order, a chunk at a time."""

    def __init__(self, con):
        self.con, self.rows, self.ord = con, [], 0

    def add(
        self,
        kind: int,
        file: str,
        id: str,
        description: str,
        organism: str,
        taxid,
        kingdom: str,
        lineage: str,
        structure: str,
        chain: str,
        source: str,
        sequence: str,
    ) -> None:
        self.rows.append(
            (
                self.ord,
                kind,
                file,
                id,
                description or "",
                organism or "",
                taxid,
                kingdom or "",
                lineage or "",
                structure or "",
                chain or "",
                source or "",
                sequence,
            )
        )
        self.ord += 1
        if len(self.rows) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        _insert(self.con, "raw", self.rows, RAW, "*, md5(sequence), length(sequence)")


def _lit(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
