"""Index files rewritten for a committed bundle (data/demo): slimmed to a size budget, and made
portable (no absolute path of the building machine; the SAE's reference statistics recorded)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import duckdb

from esmsae.index.label_spans import prune_label_spans


def slim_index(path: Path, top_n: int, per_bin: int) -> dict:
    """Shrink a built index for the committed bundle (size budget: 80 MB with a 31 MB SAE): keep each
    feature's best ``top_n`` top examples (the top-N is exact, so this equals an index built with that
    ``top_n``) and ``per_bin`` of the examples sampled per activation range, store track values as
    FLOAT instead of DOUBLE, and rewrite the file (DuckDB does not shrink a file in place)."""
    tmp = path.with_name(path.name + ".slim")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    con.execute(f"ATTACH '{path}' AS s (READ_ONLY)")
    tables = [
        r[0]
        for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_catalog = 's'").fetchall()
    ]
    for t in tables:
        if t == "top_examples":
            con.execute(
                f"""CREATE TABLE top_examples AS SELECT feature, rank, pidx, max_act, max_pos, positions,
                            CAST("values" AS FLOAT[]) AS "values" FROM s.top_examples WHERE rank < {int(top_n)} ORDER
                            BY feature, rank"""
            )
        elif t == "quantile_examples":
            con.execute(
                f"""CREATE TABLE quantile_examples AS SELECT * EXCLUDE ("values", rn), CAST("values" AS FLOAT[]) AS
                "values" FROM
                            (SELECT *, row_number() OVER (PARTITION BY feature, bin ORDER BY max_act DESC, pidx) AS rn
                            FROM s.quantile_examples)
                            WHERE rn <= {int(per_bin)} ORDER BY feature, bin, max_act DESC"""
            )
        elif t == "structure_tracks":
            # a structure coloured by a feature at under 10% of its max shows nothing: those tracks are dropped
            con.execute(
                """CREATE TABLE structure_tracks AS SELECT t.* EXCLUDE ("values"), CAST(t."values" AS FLOAT[]) AS
                "values"
                           FROM s.structure_tracks t JOIN s.features f USING (feature) WHERE t.max_act >= 0.1 *
                           f.max_act
                           ORDER BY feature, t.max_act DESC"""
            )
        elif t == "group_usage":  # shares and effect sizes as FLOAT; p and q stay DOUBLE (they go far below 1e-38)
            con.execute(
                """CREATE TABLE group_usage AS SELECT * REPLACE (CAST(frac AS FLOAT) AS frac, CAST(mean_act AS FLOAT)
                AS mean_act,
                           CAST(log_odds AS FLOAT) AS log_odds, CAST(log_odds_composition AS FLOAT) AS
                           log_odds_composition)
                           FROM s.group_usage ORDER BY grouping, feature"""
            )
        elif t == "concept_f1":  # the rows a page can show: some F1 on either half
            con.execute(
                "CREATE TABLE concept_f1 AS SELECT * FROM s.concept_f1 WHERE f1 >= 0.05 OR f1_valid >= 0.05 OR"
                " beats_baselines ORDER BY feature, f1 DESC"
            )
        else:
            con.execute(f"CREATE TABLE {t} AS SELECT * FROM s.{t}")
    if "label_spans" in tables:
        prune_label_spans(con)
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    icfg = json.loads(meta["index_config"])
    icfg.update(
        {
            "top_n": top_n,
            "per_bin": per_bin,
            "slimmed_for_bundle": f"top {top_n} and {per_bin} per range kept of the built index",
        }
    )
    con.execute("UPDATE meta SET value = ? WHERE key = 'index_config'", [json.dumps(icfg)])
    for k, v in (("top_n", top_n), ("per_bin", per_bin)):
        con.execute("UPDATE meta SET value = ? WHERE key = ?", [json.dumps(v), k])
    con.execute("DETACH s")
    con.execute("CHECKPOINT")
    con.close()
    before = path.stat().st_size
    os.replace(tmp, path)
    return {"index_mb_before_slim": round(before / 2**20, 1), "index_mb": round(path.stat().st_size / 2**20, 1)}


def make_portable(path: Path, sae_name: str, rewrite: Callable[[Any], Any]) -> tuple[list[str], dict[str, Any]]:
    """In a bundle's copy of an index: the features' reference max / IDF are the index's own (its
    proteins are the SAE's reference set), ``meta.sae`` names the bundle's SAE folder and every
    meta value goes through ``rewrite``. Returns (structure files the proteins name, meta before)."""
    con = duckdb.connect(str(path))
    try:
        con.execute("UPDATE features SET ref_max = max_act, ref_idf = idf")
        files = [r[0] for r in con.execute("SELECT DISTINCT structure FROM proteins WHERE structure <> ''").fetchall()]
        meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta").fetchall()}
        for k, v in meta.items():
            con.execute(
                "UPDATE meta SET value = ? WHERE key = ?", [json.dumps(rewrite(sae_name if k == "sae" else v)), k]
            )
    finally:
        con.close()
    return files, meta
