"""Cross-SAE matches of an index's features (``python -m esmsae match --index``) in a side file,
``index.matches.duckdb`` beside the index (as labels are), so rebuilding the index keeps them.

Two tables: ``feature_matches`` (per feature of this SAE its best counterparts in another SAE, with
the feature-splitting flag) and ``match_summaries`` (per other SAE and method the match rate next to
its chance level). The maths lives in :mod:`esmsae.analysis.match`; this module only stores and reads.
"""
from __future__ import annotations

import os

import duckdb
import pandas as pd

from esmsae.index.tables import matches_path

PAIRS_DDL = (
    "CREATE TABLE IF NOT EXISTS feature_matches (feature INTEGER, rank INTEGER, other_sae VARCHAR, other_feature"
    " INTEGER, score DOUBLE, method VARCHAR, split BOOLEAN)"
)
SUMMARY_DDL = (
    "CREATE TABLE IF NOT EXISTS match_summaries (other_sae VARCHAR, method VARCHAR, threshold DOUBLE, match_rate"
    " DOUBLE, match_rate_live DOUBLE, chance_match_rate DOUBLE, chance_match_rate_live DOUBLE, split_features INTEGER)"
)
PAIR_COLUMNS = ["feature", "rank", "other_sae", "other_feature", "score", "method", "split"]
SUMMARY_COLUMNS = ["other_sae", "method", "threshold", "match_rate", "match_rate_live", "chance_match_rate",
                   "chance_match_rate_live", "split_features"]


def write(index_path: str | os.PathLike, other: str, pairs: pd.DataFrame, summaries: pd.DataFrame) -> int:
    """Replace the rows for SAE ``other`` (pairs and summaries) in the side file; returns the pairs written."""
    p = matches_path(index_path)
    try:
        con = duckdb.connect(str(p))
    except duckdb.IOException as e:
        raise OSError(
            f"cannot write the matches into {p}: it is open elsewhere (stop the app or job using it): {e}"
        ) from e
    floats = {c: "float64" for c in ("threshold", "match_rate", "match_rate_live", "chance_match_rate",
                                      "chance_match_rate_live")}
    try:
        con.execute("BEGIN")
        con.execute(PAIRS_DDL)
        con.execute(SUMMARY_DDL)
        con.execute("DELETE FROM feature_matches WHERE other_sae = ?", [other])
        con.execute("DELETE FROM match_summaries WHERE other_sae = ?", [other])
        con.register("_m", pairs[PAIR_COLUMNS])
        con.execute("INSERT INTO feature_matches SELECT * FROM _m")
        con.register("_s", summaries[SUMMARY_COLUMNS].astype(floats))
        con.execute("INSERT INTO match_summaries SELECT * FROM _s")
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return len(pairs)


def _read(index_path: str | os.PathLike, sql: str, params: list) -> pd.DataFrame:
    p = matches_path(index_path)
    if not p.exists():
        return pd.DataFrame()
    # its own in-memory instance with the file attached read-only (see reader.FeatureIndex)
    con = duckdb.connect()
    try:
        con.execute("ATTACH ? AS m (READ_ONLY)", [str(p)])
        con.execute("USE m")
        return con.execute(sql, params).df()
    except duckdb.CatalogException:  # the file exists but holds no matches yet
        return pd.DataFrame()
    finally:
        con.close()


def related(index_path: str | os.PathLike, feature: int) -> pd.DataFrame:
    """One feature's best matches in other SAEs, or empty."""
    return _read(index_path, "SELECT other_sae, method, rank, other_feature, score, split FROM feature_matches"
                 " WHERE feature = ? ORDER BY other_sae, method, rank", [int(feature)])


def summaries(index_path: str | os.PathLike) -> pd.DataFrame:
    """Per other SAE and method: the match rate next to its chance level, or empty."""
    return _read(index_path, "SELECT * FROM match_summaries ORDER BY other_sae, method", [])
