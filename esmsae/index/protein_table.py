"""The protein set of an index as a columnar table, so that 10 M proteins fit on every rank.

The FASTA files (and labelled proteins, and the proteins of JSON grouping files) are streamed
once, a chunk at a time, into DuckDB; there they are de-duplicated by sequence md5, given
their taxonomy and group memberships, and written to ``proteins.parquet`` sorted by length,
the order of the build's batch plan. A rank then reads that file a record batch at a time and
keeps only its own batches (batch b goes to rank b mod W), so memory on a rank is one read
chunk, the length column and the labelled proteins (kept as objects: their label spans),
never a Python object per protein. Rank 0 writes the table; the others open it.

De-duplication (one protein per sequence) follows these rules, in file order:
- the first record of a sequence gives the id; later records fill what it lacks (organism,
  taxid, kingdom, lineage, structure, chain, description) and add their source;
- FASTA proteins come first; a labelled protein joins only when its sequence is in a FASTA
  (or with ``add_labelled``), then it fills what the FASTA record lacks; a JSON grouping file's
  protein joins only when its sequence is new;
- ids stay unique: a second sequence under a taken id becomes ``id#pidx``;
- one label record per (protein, source), see :func:`add_label`.
"""
from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import duckdb
import numpy as np
import pandas as pd

from esmsae.config import IndexConfig
from esmsae.core.atomic import write_text_atomic
from esmsae.core.fasta import SequenceError, read_proteins
from esmsae.index.labels import Labeled
from esmsae.index.protein_groups import _cap, _groupings, _read_grouping, _taxonomy
from esmsae.index.protein_sql import FASTA, FILLED, LABEL, _first, _lit, _Raw
from esmsae.index.proteins import Item, labels_by_md5
from esmsae.index.taxonomy import kingdom_of

# proteins per Parquet row group and per read: the file is length-sorted, so the last groups hold the longest proteins
ROW_GROUP = 8192
MEMORY_LIMIT = "2GB"  # DuckDB's buffer for the build; beyond it, it spills to the table folder
BUCKET_BYTES = 256 << 20  # proteins sorted at once in the final write (sequence bytes + 200 a row)
COLUMNS = ("pidx", "id", "description", "length", "sequence", "organism", "taxid", "kingdom", "lineage", "source",
           "label_sources", "structure", "chain")  # the index's proteins table, less n_active_features


@dataclass
class ProteinTable:
    """A protein set on disk: ``proteins.parquet`` (one row per unique sequence, sorted by length
    then pidx, with a column per grouping), ``members.parquet`` (pidx, grouping, grp),
    the labelled proteins' label records (``labels.pkl``) and ``table.json`` (counts, report)."""

    folder: Path
    n: int
    report: dict[str, Any]
    labels: dict[int, list[Labeled]] = field(default_factory=dict)  # pidx -> label records (labelled proteins only)
    groupings: list[str] = field(default_factory=list)  # grouping names; column g<i> of proteins.parquet is grouping i

    @property
    def parquet(self) -> str:
        return str(self.folder / "proteins.parquet")

    @property
    def members(self) -> str:
        return str(self.folder / "members.parquet")

    # ------------------------------------------------------------------ build and open
    @classmethod
    def build(cls, cfg: IndexConfig, labelled: list[Labeled], folder: str | Path) -> "ProteinTable":
        """Read the protein set of ``cfg`` (FASTA, labelled proteins, grouping and taxonomy files)
        into ``folder``; DuckDB does the de-duplication, joins and caps, out of core."""
        folder = Path(folder)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        con = duckdb.connect(str(folder / "build.duckdb"))
        try:
            con.execute(f"SET temp_directory = '{folder / 'spill'}'")
            con.execute("SET preserve_insertion_order = false")
            con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
            report = _build(con, cfg, labelled or [], folder)
            n = int(con.execute("SELECT count(*) FROM p").fetchall()[0][0])
            labels = _labels_by_pidx(con, labelled or [], report)
            groupings = _write(con, folder, labels)
        finally:
            con.close()
            (folder / "build.duckdb").unlink(missing_ok=True)
            shutil.rmtree(folder / "spill", ignore_errors=True)
        with open(folder / "labels.pkl", "wb") as fh:
            pickle.dump(labels, fh)
        write_text_atomic(folder / "table.json", json.dumps({"n": n, "report": report, "groupings": groupings}))
        return cls(folder, n, report, labels, groupings)

    @classmethod
    def open(cls, folder: str | Path) -> "ProteinTable":
        folder = Path(folder)
        info = json.loads((folder / "table.json").read_text())
        with open(folder / "labels.pkl", "rb") as fh:
            labels = pickle.load(fh)
        return cls(folder, info["n"], info["report"], labels, info["groupings"])

    # ------------------------------------------------------------------ queries
    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """``sql`` over the views ``proteins`` and ``members`` (a fresh in-memory DuckDB)."""
        con = duckdb.connect()
        try:
            con.execute(f"CREATE VIEW proteins AS SELECT * FROM read_parquet('{self.parquet}')")
            con.execute(f"CREATE VIEW members AS SELECT * FROM read_parquet('{self.members}')")
            return con.execute(sql, params or []).df()
        finally:
            con.close()

    def lengths(self) -> np.ndarray:
        """The length of every protein, in file order (length, then pidx): the batch plan's input."""
        import pyarrow.parquet as pq

        return pq.read_table(self.parquet, columns=["length"], use_threads=False).column(0).to_numpy().astype(np.int64)

    def grouped_lengths(self) -> np.ndarray:
        if not self.groupings:
            return np.zeros(0, np.int64)
        any_group = " OR ".join(f"g{i} IS NOT NULL" for i in range(len(self.groupings)))
        return self.query(f"SELECT length FROM proteins WHERE {any_group}")["length"].to_numpy(np.int64)

    def group_names(self) -> dict[str, list[str]]:
        df = self.query("SELECT DISTINCT grouping, grp FROM members ORDER BY grouping, grp")
        return {g: d["grp"].tolist() for g, d in df.groupby("grouping", sort=True)}

    def member_counts(self, group_ids: dict[str, dict[str, int]], edges: np.ndarray) -> dict[str, np.ndarray]:
        """grouping -> [groups, length bins] proteins; the bin of a length is the number of inner
        edges at or below it (``group_stats.length_bin``)."""
        bin_sql = " + ".join(f"(length >= {float(e)!r})::INT" for e in edges) or "0"
        df = self.query(
            f"SELECT grouping, grp, {bin_sql} AS bin, count(*) AS n FROM members JOIN proteins USING (pidx) GROUP"
            " BY ALL"
        )
        out = {g: np.zeros((len(ids), len(edges) + 1), np.int64) for g, ids in group_ids.items()}
        for g, grp, b, n in df.itertuples(index=False):
            out[g][group_ids[g][grp], int(b)] += int(n)
        return out

    def columns(self, pidx: list[int], cols: tuple[str, ...] = ("id", "description")) -> pd.DataFrame:
        """Some columns of the given proteins, indexed by pidx."""
        con = duckdb.connect()
        try:
            con.register("_want", pd.DataFrame({"pidx": np.asarray(sorted(set(pidx)), np.int64)}))
            return (
                con.execute(
                    f"SELECT pidx, {', '.join(cols)} FROM read_parquet('{self.parquet}') JOIN _want USING (pidx)"
                )
                .df()
                .set_index("pidx")
            )
        finally:
            con.close()

    def labelled_items(self) -> dict[int, Item]:
        """pidx -> Item of every labelled protein (sequence and labels), for the concept pass."""
        if not self.labels:
            return {}
        got = self.columns(list(self.labels), ("id", "sequence"))
        return {
            int(p): Item(got.at[p, "id"], got.at[p, "sequence"], labels=labs, pidx=int(p))
            for p, labs in self.labels.items()
        }

    def items(self, keep: np.ndarray | None = None) -> Iterator[Item]:
        """The proteins in file order (length, then pidx), read a record batch at a time; with
        ``keep`` (a bool per row of the file) only those rows become Items."""
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.parquet)
        row = 0
        # one row group at a time (iter_batches read ahead: 0.5 GB more at 1 M proteins)
        for g in range(pf.metadata.num_row_groups):
            rb = pf.read_row_group(g, use_threads=False)
            n = rb.num_rows
            want = np.arange(n) if keep is None else np.flatnonzero(keep[row:row + n])
            row += n
            if not len(want):
                continue
            for rec in rb.take(want).to_pylist():
                yield _item(rec, self.labels, self.groupings)


def _item(rec: dict, labels: dict[int, list[Labeled]], groupings: list[str]) -> Item:
    p = int(rec["pidx"])
    return Item(
        rec["id"],
        rec["sequence"],
        rec["description"],
        rec["organism"],
        None if rec["taxid"] < 0 else int(rec["taxid"]),
        kingdom=rec["kingdom"],
        lineage=rec["lineage"],
        source=rec["source"],
        structure=rec["structure"],
        chain=rec["chain"],
        labels=labels.get(p, []),
        groups={g: rec[f"g{i}"] for i, g in enumerate(groupings) if rec[f"g{i}"] is not None},
        pidx=p,
    )


# ---------------------------------------------------------------------- the build, in SQL
def _build(con, cfg: IndexConfig, labelled: list[Labeled], folder: Path) -> dict[str, Any]:
    con.execute(
        "CREATE TABLE raw (ord BIGINT, kind TINYINT, file VARCHAR, id VARCHAR, description VARCHAR, organism VARCHAR,"
        " taxid BIGINT, kingdom VARCHAR, lineage VARCHAR, structure VARCHAR, chain VARCHAR, source VARCHAR, sequence"
        " VARCHAR, md5 VARCHAR, length BIGINT)"
    )
    con.execute(
        "CREATE TABLE gmap (grouping VARCHAR, line BIGINT, key_md5 VARCHAR, key_id VARCHAR, key_parsed VARCHAR, grp"
        " VARCHAR)"
    )
    raw = _Raw(con)
    skipped: list = []
    for f in cfg.fasta:
        src = Path(f).name.split(".")[0]
        for p in read_proteins(f, on_invalid=cfg.on_invalid, skipped=skipped, unique_ids=False):
            raw.add(
                FASTA,
                str(f),
                p.id,
                p.description,
                p.organism,
                p.taxid,
                kingdom_of(p.taxid, organism=p.organism),
                "",
                "",
                "",
                src,
                p.sequence,
            )
    for lab in labelled:
        raw.add(
            LABEL,
            lab.source,
            lab.id,
            "",
            lab.organism,
            lab.taxid,
            lab.kingdom,
            lab.lineage,
            lab.structure,
            lab.chain,
            lab.source,
            lab.sequence,
        )
    names = {_read_grouping(con, raw, gf): str(gf) for gf in cfg.groups}  # grouping name -> file
    raw.flush()
    dup = _first(
        con.execute(
            "SELECT file, id FROM raw WHERE kind = 0 GROUP BY file, id HAVING count(*) > 1 ORDER BY min(ord) LIMIT 1"
        )
    )
    if dup:
        raise SequenceError(f"{dup[0]}: duplicate record id {dup[1]!r}")
    # Every step below keeps the sequences out of aggregates, windows and sorts: a sequence stays in
    # ``raw`` until the final write, where it is fetched by the ord of its first record (wide rows
    # in DuckDB's hash tables and windows do not spill well: 10 M proteins ran out of a 2 GB buffer).
    # which records make each sequence: FASTA first, labelled proteins (only with add_labelled
    # when no FASTA has the sequence), then grouping-file proteins when the sequence is new
    add_all = "true" if cfg.add_labelled else "false"
    con.execute(
        f"""CREATE TABLE keyed AS SELECT md5, CASE WHEN bool_or(kind = 0) THEN 0 WHEN {add_all} AND bool_or(kind = 1)
        THEN 1
                    WHEN bool_or(kind = 2) THEN 2 ELSE -1 END AS prim, count(*) AS n_rec FROM raw GROUP BY md5"""
    )
    con.execute(
        """CREATE TABLE inc AS SELECT raw.ord, raw.kind, raw.md5, k.prim, k.n_rec > 1 AS multi FROM raw JOIN keyed k
        USING (md5)
                   WHERE k.prim >= 0 AND (raw.kind = k.prim OR (k.prim = 0 AND raw.kind = 1))"""
    )
    # the first record of the primary kind gives id and sequence (labelled records come after every
    # FASTA record, so the first included record is of the primary kind)
    con.execute("CREATE TABLE pk AS SELECT md5, min(ord) AS ord0, bool_or(multi) AS multi FROM inc GROUP BY md5")
    # a sequence with several records: later records fill what the first lacks, and its sources
    # are those of its records of the primary kind, in order (most sequences have one record)
    filled = ", ".join(f"coalesce(arg_min(r.{c}, r.ord) FILTER (WHERE r.{c} <> ''), '') AS {c}" for c in FILLED)
    con.execute(
        f"""CREATE TABLE fill AS SELECT i.md5, {filled}, arg_min(r.taxid, r.ord) FILTER (WHERE r.taxid IS NOT NULL) AS
        taxid
                    FROM inc i JOIN raw r USING (ord) WHERE i.multi GROUP BY i.md5"""
    )
    con.execute("""CREATE TABLE msrc AS SELECT md5, string_agg(source, ',' ORDER BY o) AS source FROM
                   (SELECT i.md5, r.source, min(i.ord) AS o FROM inc i JOIN raw r USING (ord) WHERE i.multi AND i.kind
                   = i.prim AND r.source <> ''
                    GROUP BY i.md5, r.source) GROUP BY md5""")
    # pidx: order of first appearance
    con.execute(
        "CREATE TABLE pidx AS SELECT md5, ord0, multi, (row_number() OVER (ORDER BY ord0) - 1)::BIGINT AS pidx FROM pk"
    )
    pick = ", ".join(f"CASE WHEN f.md5 IS NULL THEN r.{c} ELSE f.{c} END AS {c}" for c in (*FILLED, "taxid"))
    con.execute(
        f"""CREATE TABLE p AS SELECT x.pidx, x.md5, x.ord0, r.id, r.length, {pick},
                    CASE WHEN x.multi THEN coalesce(s.source, '') ELSE r.source END AS source
                    FROM pidx x JOIN raw r ON r.ord = x.ord0 LEFT JOIN fill f ON f.md5 = x.md5 LEFT JOIN msrc s ON
                    s.md5 = x.md5"""
    )
    # ids stay unique: a taken id gets '#pidx' (the first holder keeps it)
    con.execute(
        """UPDATE p SET id = p.id || '#' || p.pidx FROM (SELECT pidx FROM (SELECT pidx, row_number() OVER (PARTITION
        BY id ORDER BY pidx) AS rn
                   FROM p WHERE id IN (SELECT id FROM p GROUP BY id HAVING count(*) > 1)) WHERE rn > 1) d WHERE p.pidx
                   = d.pidx"""
    )
    report: dict[str, Any] = {"skipped_invalid": len(skipped), "unknown_group_ids": {}}
    report["duplicate_sequences"] = int(con.execute("SELECT count(*) FROM inc WHERE kind = prim").fetchall()[0][0]) - \
        int(con.execute("SELECT count(*) FROM p").fetchall()[0][0])
    for t in ("keyed", "inc", "pk", "fill", "msrc", "pidx"):
        con.execute(f"DROP TABLE {t}")
    _taxonomy(con, cfg)
    _groupings(con, cfg, names, report)
    if cfg.max_proteins:
        con.execute(f"DELETE FROM p WHERE pidx >= {int(cfg.max_proteins)}")
        con.execute(f"DELETE FROM members WHERE pidx >= {int(cfg.max_proteins)}")
    if cfg.group_sources:  # only proteins of these sources join groupings (a sample of its kingdoms)
        con.register("_srcs", pd.DataFrame({"s": list(cfg.group_sources)}))
        con.execute(
            "DELETE FROM members WHERE pidx IN (SELECT pidx FROM p WHERE NOT list_has_any(string_split(source, ','),"
            " (SELECT list(s) FROM _srcs)))"
        )
        con.unregister("_srcs")
    if cfg.group_cap:
        report["capped_group_members"] = _cap(con, cfg.group_cap)
    return report


def _labels_by_pidx(con, labelled: list[Labeled], report: dict) -> dict[int, list[Labeled]]:
    """Label records of the proteins in the set, one per (protein, source)."""
    by_md5, dropped = labels_by_md5(labelled)
    pidx_of: dict[str, int] = {}
    if by_md5:
        con.register("_lab", pd.DataFrame({"md5": list(by_md5)}))
        pidx_of = dict(con.execute("SELECT md5, pidx FROM p JOIN _lab USING (md5)").fetchall())
        con.unregister("_lab")
    report["duplicate_label_records"] = sum(n for h, n in dropped.items() if h in pidx_of)
    return {int(pidx_of[h]): labs for h, labs in by_md5.items() if h in pidx_of}


def _write(con, folder: Path, labels: dict[int, list[Labeled]]) -> list[str]:
    """``proteins.parquet`` sorted by (length, pidx), the batch plan's order, with each protein's
    label sources and one column per grouping (``g0``, ``g1``, ...: its group there, or null);
    ``members.parquet``. Returns the grouping names, in column order."""
    con.register(
        "_ls",
        pd.DataFrame(
            {
                "pidx": np.array(list(labels), np.int64),
                "ls": [",".join(sorted({lab.source for lab in v})) for v in labels.values()],
            },
            columns=["pidx", "ls"],
        ),
    )
    names = [g for (g,) in con.execute("SELECT DISTINCT grouping FROM members ORDER BY grouping").fetchall()]
    # one join per grouping rather than a list aggregate over 10 M proteins (hash joins spill)
    cols = "".join(f", m{i}.grp AS g{i}" for i in range(len(names)))
    joins = " ".join(
        f"LEFT JOIN (SELECT pidx, grp FROM members WHERE grouping = {_lit(g)}) m{i} USING (pidx)"
        for i, g in enumerate(names)
    )
    # Sorting 10 M wide rows in one statement runs out of DuckDB's buffer, so the rows go first, in
    # one streaming pass, to length buckets of about BUCKET_BYTES each; each bucket is then sorted
    # alone, and the sorted buckets, in length order, are copied into one file.
    sizes = con.execute("SELECT length, sum(length + 200)::BIGINT FROM p GROUP BY length ORDER BY length").fetchall()
    bucket_of, b, acc = [], 0, 0
    for length, nbytes in sizes:
        if acc and acc + nbytes > BUCKET_BYTES:
            b, acc = b + 1, 0
        bucket_of.append((length, b))
        acc += nbytes
    con.register("_lb", pd.DataFrame(bucket_of, columns=["length", "bucket"]).astype("int64"))
    tmp = folder / "buckets"
    rows = f"""SELECT p.pidx, p.id, p.description, p.length, r.sequence, p.organism, coalesce(p.taxid, -1)::BIGINT AS
    taxid,
               p.kingdom, p.lineage, p.source, coalesce(l.ls::VARCHAR, '') AS label_sources, p.structure, p.chain,
               p.md5{cols}, lb.bucket
               FROM p JOIN raw r ON r.ord = p.ord0 JOIN _lb lb ON lb.length = p.length LEFT JOIN _ls l USING (pidx)
               {joins}"""
    con.execute(f"COPY ({rows}) TO '{tmp}' (FORMAT parquet, PARTITION_BY (bucket), ROW_GROUP_SIZE {ROW_GROUP})")
    sorted_parts = []
    for k in range(b + 1 if bucket_of else 0):
        part = tmp / f"bucket={k}"
        if part.exists():
            sorted_parts.append(str(tmp / f"sorted-{k:05d}.parquet"))
            con.execute(
                f"""COPY (SELECT * FROM read_parquet('{part}/*.parquet', hive_partitioning = false) ORDER BY length,
                pidx) TO '{sorted_parts[-1]}'
                            (FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP})"""
            )
            shutil.rmtree(part)
    con.execute("SET preserve_insertion_order = true")  # the concatenation keeps the buckets' order
    if sorted_parts:
        con.execute(
            f"COPY (SELECT * FROM read_parquet({sorted_parts!r})) TO '{folder / 'proteins.parquet'}' (FORMAT parquet,"
            f" ROW_GROUP_SIZE {ROW_GROUP})"
        )
    else:  # no proteins: an empty file with the columns
        con.execute(
            f"COPY (SELECT * EXCLUDE (bucket) FROM ({rows})) TO '{folder / 'proteins.parquet'}' (FORMAT parquet)"
        )
    con.execute("SET preserve_insertion_order = false")
    shutil.rmtree(tmp)
    con.unregister("_lb")
    con.unregister("_ls")
    con.execute(
        f"COPY (SELECT * FROM members ORDER BY grouping, grp, pidx) TO '{folder / 'members.parquet'}' (FORMAT parquet)"
    )
    return names


