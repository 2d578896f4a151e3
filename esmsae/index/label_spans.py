"""The ``label_spans`` table: the per-residue labels (UniProt features, TMbed, secondary structure,
binding, conservation, disorder, structure RSA) of the proteins an index shows as examples, as
spans, so a feature page can draw them under each activation track (as InterPro draws domains under
a sequence). Only proteins that appear in an example table are kept: the labels of the other
labelled proteins are already summarised by the concept tables."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from esmsae.index.labels import Labeled

EXAMPLE_TABLES = ("top_examples", "quantile_examples", "structure_tracks")
COLUMNS = ("pidx", "source", "concept", "starts", "ends")


def spans_frame(labels: dict[int, list[Labeled]], keep: set[int] | None = None) -> pd.DataFrame:
    """One row per (protein, concept): 0-based [start, end) spans as two integer lists."""
    rows = []
    for pidx in sorted(labels):
        if keep is not None and pidx not in keep:
            continue
        for lab in labels[pidx]:
            for concept, spans in sorted(lab.spans.items()):
                if spans:
                    s = sorted(spans)
                    rows.append((int(pidx), lab.source, concept, [int(a) for a, _ in s], [int(b) for _, b in s]))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _examples_sql(con) -> str:
    """SQL for the pidx of every example protein (the example tables this index has), or ""."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables"
                                         " WHERE table_catalog = current_database()").fetchall()}
    return " UNION ".join(f"SELECT DISTINCT pidx FROM {t}" for t in EXAMPLE_TABLES if t in tables)


def example_pidx(con) -> set[int]:
    sql = _examples_sql(con)
    return {int(r[0]) for r in con.execute(sql).fetchall()} if sql else set()


def prune_label_spans(con) -> None:
    """Keep the labels of proteins that are still examples (after ``slim`` dropped some)."""
    sql = _examples_sql(con)
    con.execute("DELETE FROM label_spans" + (f" WHERE pidx NOT IN ({sql})" if sql else ""))


def write_label_spans(con, labels: dict[int, list[Labeled]]) -> int:
    """Write (or replace) ``label_spans`` for the example proteins; returns its row count."""
    df = spans_frame(labels, example_pidx(con))
    con.execute("DROP TABLE IF EXISTS label_spans")
    con.execute("CREATE TABLE label_spans (pidx INTEGER, source VARCHAR, concept VARCHAR, starts INTEGER[],"
                " ends INTEGER[])")
    if len(df):
        con.register("_spans_df", df)
        con.execute("INSERT INTO label_spans SELECT * FROM _spans_df ORDER BY pidx, source, concept")
        con.unregister("_spans_df")
    return len(df)


def add_label_spans(index_path: str | Path, labelled: list[Labeled]) -> int:
    """Add ``label_spans`` to a built index from label records (matched to its proteins by sequence,
    as the build matches them): for an index built before the table existed."""
    import duckdb

    from esmsae.core.fasta import seq_md5
    from esmsae.index.proteins import labels_by_md5

    by_md5, _ = labels_by_md5(labelled)
    con = duckdb.connect(str(index_path))
    try:
        keep = example_pidx(con)
        labels: dict[int, list[Labeled]] = {}
        if keep:
            con.register("_keep", pd.DataFrame({"pidx": sorted(keep)}))
            for pidx, seq in con.execute("SELECT pidx, sequence FROM proteins JOIN _keep USING (pidx)").fetchall():
                if seq_md5(seq) in by_md5:
                    labels[int(pidx)] = by_md5[seq_md5(seq)]
            con.unregister("_keep")
        n = write_label_spans(con, labels)
        con.execute("CHECKPOINT")
        return n
    finally:
        con.close()
