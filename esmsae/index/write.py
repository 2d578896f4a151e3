"""Writing the built index into its DuckDB file: the proteins, every table computed from the pass,
and the meta table (format version, SAE, model, settings, what was skipped)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from esmsae.config import IndexConfig
from esmsae.core.version import __version__
from esmsae.index.accumulate import Stream
from esmsae.index.concept_f1 import (
    THRESHOLDS,
)
from esmsae.index.protein_table import COLUMNS, MEMORY_LIMIT, ProteinTable
from esmsae.index.streaming import TrackSpill
from esmsae.index.tables import FORMAT_VERSION, HIST_EDGES, SCHEMA, quantile_frame, top_frame
from esmsae.sae.checkpoint import read_eval, weights_sha256

EXAMPLE_BLOCK = 2048  # features per block when the example tables are written


def _write_proteins(con, table: ProteinTable, done: np.ndarray) -> int:
    """The index's proteins table: the protein table's rows of the indexed proteins, in pidx order,
    with how many features fire on each; returns their number."""
    con.register("_done", pd.DataFrame({"pidx": done[:, 0], "n_active_features": done[:, 1]}))
    cols = ", ".join(f"p.{c}" for c in COLUMNS)
    con.execute(f"CREATE TABLE proteins ({SCHEMA['proteins']})")
    # DuckDB's default buffer (80% of RAM) let this sort take 9.3 GB at 10 M proteins; with 2 GB it
    # spills and takes 2.7 GB, no slower (bench/protein_table.py)
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute(
        f"INSERT INTO proteins SELECT {cols}, d.n_active_features FROM read_parquet('{table.parquet}') p JOIN _done d"
        " USING (pidx) ORDER BY p.pidx"
    )
    con.execute("RESET memory_limit")
    con.unregister("_done")
    return len(done)


def _table(con, name: str, df, order: str = "") -> None:
    con.register(f"_{name}_df", df)
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM _{name}_df" + (f" ORDER BY {order}" if order else ""))
    con.unregister(f"_{name}_df")


def _write_tables(
    con, cfg: IndexConfig, st: Stream, spill: TrackSpill, features, concepts_df, f1_df, groups_df, usage
) -> None:
    F = len(features)
    _table(con, "features", features)
    hist_f, hist_b = np.nonzero(st.hist_FH)
    _table(
        con,
        "feature_hist",
        pd.DataFrame(
            {
                "feature": hist_f,
                "bin_lo": HIST_EDGES[hist_b],
                "bin_hi": HIST_EDGES[hist_b + 1],
                "count": st.hist_FH[hist_f, hist_b],
            }
        ),
    )
    # written in blocks of features, in feature order (DuckDB keeps insertion order), so the
    # tracks in memory at once are bounded by the block, not by the whole index
    for lo in range(0, F, EXAMPLE_BLOCK):
        hi = min(F, lo + EXAMPLE_BLOCK)
        verb = "CREATE TABLE {} AS" if lo == 0 else "INSERT INTO {}"
        con.register("top_df", top_frame(st.top, spill, lo, hi))
        con.execute(verb.format("top_examples") + " SELECT * FROM top_df ORDER BY feature, rank")
        con.register("q_df", quantile_frame(st.res, spill, st.max_F, cfg.quantile_bins, cfg.per_bin, lo, hi))
        con.execute(verb.format("quantile_examples") + " SELECT * FROM q_df ORDER BY feature, bin, max_act DESC")
        con.unregister("top_df")
        con.unregister("q_df")
    _table(
        con,
        "structure_tracks",
        pd.DataFrame(st.struct_rows, columns=["pidx", "feature", "max_act", "positions", "values"]),
        "feature, max_act DESC",
    )
    _table(con, "concepts", concepts_df)
    _table(con, "concept_f1", f1_df, "feature, f1 DESC")
    _table(con, "groups", groups_df)
    con.register("_usage_df", usage)
    con.execute("CREATE TABLE group_usage AS SELECT * FROM _usage_df WHERE n_fire > 0 ORDER BY grouping, feature")
    con.unregister("_usage_df")


def _write_meta(
    con,
    cfg: IndexConfig,
    meta: dict,
    plm,
    hook,
    sae,
    st: Stream,
    n_done: int,
    report: dict,
    t0: float,
    world_size: int = 1,
) -> None:
    wsha = weights_sha256(cfg.sae)
    info = {
        "format_version": FORMAT_VERSION,
        "esmsae_version": __version__,
        "sae": str(cfg.sae),
        "sae_sha256": wsha,
        "sae_cfg": meta,
        "eval": read_eval(cfg.sae),
        "model": plm.name,
        "hook": hook.name,
        "layer": hook.layer,
        "site": hook.site,
        "n_latents": sae.cfg.n_latents,
        "d_in": sae.d_in,
        "n_proteins": n_done,
        "n_residues": int(st.n_res),
        "thresholds": list(THRESHOLDS),
        "top_n": cfg.top_n,
        "quantile_bins": cfg.quantile_bins,
        "per_bin": cfg.per_bin,
        "build_seconds": round(time.time() - t0, 1),
        "world_size": world_size,
        "skipped_model": len(st.skipped_model),
        "skipped_examples": st.skipped_model[:20],
        "collect": report,
        "index_config": asdict(cfg),
        "normalisations": {
            "raw": "SAE activation",
            "max": "activation / feature max (0..1)",
            "idf": "activation / feature max x IDF, IDF = log(N proteins / proteins where it fires)",
        },
    }
    con.execute(f"CREATE TABLE meta ({SCHEMA['meta']})")
    con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v, default=str)) for k, v in info.items()])
