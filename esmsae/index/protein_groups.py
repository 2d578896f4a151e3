"""The protein table's groupings: grouping files (TSV, JSON, MMseqs2 clusters) read into DuckDB, the
taxonomy joined in, memberships capped per group."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from esmsae.config import IndexConfig
from esmsae.core.fasta import parse_header, seq_md5
from esmsae.index.protein_sql import CHUNK, GROUP_FILE, _first, _insert, _Raw
from esmsae.index.proteins import IndexBuildError, grouping_json, is_mmseqs_clusters, read_taxonomy, tsv_pairs
from esmsae.index.taxonomy import kingdom_of


def _read_grouping(con, raw: _Raw, path: str) -> str:
    """One grouping file into ``gmap`` (and a JSON file's proteins into ``raw``); returns its name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"grouping file not found: {path}")
    name, rows, line = path.stem, [], 0
    cols = ["grouping", "line", "key_md5", "key_id", "key_parsed", "grp"]
    if path.suffix == ".json":
        for group, header, seq in grouping_json(path.read_text(), path.name):
            pid, desc, org, taxid = parse_header(header)
            raw.add(GROUP_FILE, name, pid, desc, org, taxid, kingdom_of(taxid, organism=org), "", "", "", name, seq)
            rows.append((name, line, seq_md5(seq), None, None, group))
            line += 1
    else:
        with open(path) as fh:  # a chunk of lines at a time: a cluster TSV of 10 M members
            fmt, first = "", 1
            while True:
                text = fh.read(1 << 24)
                text += fh.readline() if text and not text.endswith("\n") else ""
                if not text:
                    break
                pairs = tsv_pairs(text, str(path), first)
                first += text.count("\n")
                fmt = fmt or ("mmseqs" if is_mmseqs_clusters(pairs) else "plain")  # MMseqs2 writes rep<TAB>rep first
                for a, b in pairs:
                    key, group = (b, a) if fmt == "mmseqs" else (a, b)
                    is_md5 = key.startswith("md5:")
                    rows.append(
                        (
                            name,
                            line,
                            key[4:] if is_md5 else None,
                            None if is_md5 else key,
                            None if is_md5 else parse_header(key)[0],
                            group,
                        )
                    )
                    line += 1
                    if len(rows) >= CHUNK:
                        _insert(con, "gmap", rows, cols)
    _insert(con, "gmap", rows, cols)
    return name


def _taxonomy(con, cfg: IndexConfig) -> None:
    """Lineages from the taxonomy file (where a protein has none), then kingdoms where missing:
    computed once per distinct (taxid, lineage), not once per protein."""
    if cfg.taxonomy:
        lineages = read_taxonomy(cfg.taxonomy)
        con.register(
            "_tax",
            pd.DataFrame({"taxid": list(lineages), "lin": list(lineages.values())}, columns=["taxid", "lin"]).astype(
                {"taxid": "int64"}
            ),
        )
        con.execute(
            "UPDATE p SET lineage = t.lin::VARCHAR FROM _tax t WHERE p.lineage = '' AND p.taxid = t.taxid::BIGINT"
        )
        con.unregister("_tax")
    todo = con.execute("SELECT DISTINCT taxid, lineage FROM p WHERE kingdom = ''").fetchall()
    kd = [(t, lin, kingdom_of(None if t is None else int(t), lin)) for t, lin in todo]
    kd = [r for r in kd if r[2]]
    if kd:
        con.register("_kd", pd.DataFrame(kd, columns=["taxid", "lin", "k"]).astype({"taxid": "Int64"}))
        con.execute(
            "UPDATE p SET kingdom = d.k FROM _kd d WHERE p.kingdom = '' AND p.lineage = d.lin AND p.taxid IS NOT"
            " DISTINCT FROM d.taxid"
        )
        con.unregister("_kd")


def _groupings(con, cfg: IndexConfig, names: dict[str, str], report: dict) -> None:
    """``members``: the grouping files' memberships (a key is 'md5:<hash>', an id, or a header
    whose parsed id matches; the last line of a key wins), then the built-in groupings kingdom,
    organism and lineage (at ``cfg.lineage_rank``) where no file gave one of that name."""
    con.execute(
        """CREATE TABLE gm AS SELECT g.grouping, g.line, g.grp, coalesce(a.pidx, b.pidx, c.pidx) AS pidx FROM gmap g
                   LEFT JOIN p a ON a.md5 = g.key_md5 LEFT JOIN p b ON b.id = g.key_id LEFT JOIN p c ON c.id =
                   g.key_parsed"""
    )
    for name, path in names.items():
        first = _first(
            con.execute(
                "SELECT coalesce('md5:' || key_md5, key_id) FROM gmap WHERE grouping = ? ORDER BY line LIMIT 1", [name]
            )
        )
        # keys: distinct per file (a later line of the same key replaces the earlier one)
        n_keys, unknown = con.execute(
            """SELECT count(*), count(*) FILTER (WHERE pidx IS NULL) FROM (SELECT arg_max(pidx, line) AS pidx
            FROM gm JOIN gmap USING (grouping, line) WHERE grouping = ? GROUP BY coalesce('md5:' || key_md5,
            key_id))""",
            [name],
        ).fetchall()[0]
        if n_keys and unknown == n_keys:
            raise IndexBuildError(
                f"{path}: none of its {n_keys} protein ids is in the protein set (first: {first[0]!r})"
            )
        report["unknown_group_ids"][name] = int(unknown)
    con.execute(
        """CREATE TABLE members AS SELECT pidx, grouping, arg_max(grp, line) AS grp FROM gm WHERE pidx IS NOT NULL
                   GROUP BY pidx, grouping"""
    )
    r = int(cfg.lineage_rank) + 1
    for g, expr, cond in (
        ("kingdom", "kingdom", "kingdom <> ''"),
        ("organism", "organism", "organism <> ''"),
        (
            "lineage",
            f"trim(string_split(lineage, ';')[{r}])",
            f"lineage <> '' AND len(string_split(lineage, ';')) >= {r}",
        ),
    ):
        con.execute(f"""INSERT INTO members SELECT pidx, '{g}', {expr} FROM p WHERE {cond}
                        AND pidx NOT IN (SELECT pidx FROM members WHERE grouping = '{g}')""")
    con.execute("DROP TABLE gm")
    con.execute("DROP TABLE gmap")


def _cap(con, cap: int) -> dict[str, int]:
    """At most ``cap`` proteins per group, the ones with the smallest sequence md5 (the same
    proteins whatever the file order); the others leave that grouping."""
    con.execute(
        f"""CREATE TABLE dropped AS SELECT pidx, grouping FROM (SELECT m.pidx, m.grouping,
                    row_number() OVER (PARTITION BY m.grouping, m.grp ORDER BY p.md5) AS rn FROM members m JOIN p
                    USING (pidx)) WHERE rn > {int(cap)}"""
    )
    out = dict(con.execute("SELECT grouping, count(*) FROM dropped GROUP BY grouping ORDER BY grouping").fetchall())
    con.execute("DELETE FROM members USING dropped d WHERE members.pidx = d.pidx AND members.grouping = d.grouping")
    con.execute("DROP TABLE dropped")
    return {g: int(n) for g, n in out.items()}
