"""Reading a feature index (the DuckDB file written by :mod:`esmsae.index.build`): every query the
app, the API and the reports make, user labels (a writable file beside the index) and the reference
statistics a checkpoint takes from an index. No torch here: the app's read path stays light.

The index file is opened read-only (a job writing a new index renames it into place, so readers
never see half a file); labels and cross-SAE matches live in side files that a rebuild keeps.
"""
from __future__ import annotations

import functools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from esmsae.index import matches
from esmsae.index.tables import check_format, labels_path


class FeatureIndex:
    """Read-only view of an index file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no feature index at {self.path} (build one with `python -m esmsae index`)")
        # A DuckDB instance of its own (in-memory, with the file attached read-only): duckdb.connect
        # on a path hands back the instance already open for that path in this process, which
        # still reads the old file after a rebuild renamed a new one into place.
        self.con = duckdb.connect()
        try:
            self.con.execute("ATTACH ? AS idx (READ_ONLY)", [str(self.path)])
            self.con.execute("USE idx")
            self.meta = {k: json.loads(v) for k, v in self.con.execute("SELECT key, value FROM meta").fetchall()}
        except duckdb.Error as e:  # another file, or another DuckDB database: say so, not a traceback
            self.con.close()
            raise ValueError(f"{self.path} is not a feature index (a DuckDB file written by `esmsae index`):"
                             f" {str(e).splitlines()[0]}") from None
        check_format(self.meta, self.path)
        self._searcher: tuple | None = None  # (labels it was built with, index.search.Searcher), on first search
        self._verdicts: pd.DataFrame | None = None  # index.verdicts.feature_verdicts, on first use
        self.n_features = int(self.meta["n_latents"])

    @functools.cached_property
    def tables(self) -> set[str]:
        """The tables of this index (optional ones: cluster_profiles), read once, when first asked."""
        return set(self.q("SELECT table_name FROM information_schema.tables")["table_name"])

    def q(self, sql: str, params: list | None = None) -> pd.DataFrame:
        # one cursor per query: Streamlit runs sessions in threads (a cursor starts in the
        # instance's default catalog, so it selects the attached index first)
        cur = self.con.cursor()
        cur.execute("USE idx")
        return cur.execute(sql, params or []).df()

    # -------------------------------------------------------- run card
    def _model_file(self, name: str) -> Path | None:
        """A file beside the protein LM's weights, or None: the recorded path, or in a bundle (data/demo)
        the model folder beside the index (its meta records the portable name "model")."""
        model = str(self.meta.get("model", ""))
        for d in (Path(model), self.path.parent / model, self.path.parent / str(self.meta.get("sae", "")) / model):
            if d.is_dir() and (d / name).exists():
                return d / name
        return None

    def encode_dtype(self) -> str:
        """The dtype of the SAE encoder's matmul when this index was built (``--encode-dtype``)."""
        return str(self.meta["index_config"].get("encode_dtype", "float32"))

    def lm_eval(self) -> dict[str, Any]:
        """The protein LM's own evaluation, when the bundle or the model folder carries one, with
        ``objective`` "causal" (a bundle's ``lm_eval.json``: next-residue perplexity next to bigram
        and unigram) or "masked" (an LM esmsae trained: <mask> perplexity next to unigram); else {}."""
        beside = self.path.parent / "lm_eval.json"
        f = beside if beside.exists() else self._model_file("lm_eval.json")
        if f is None:
            return {}
        try:
            ev = json.loads(f.read_text())
        except (ValueError, OSError):
            return {}
        need = (
            ("next_ppl", "bigram_ppl", "unigram_ppl", "n_proteins")
            if f == beside
            else ("masked_ppl", "masked_unigram_ppl")
        )
        if any(k not in ev for k in need):
            return {}
        return {**ev, "objective": "causal" if f == beside else "masked"}

    def lm_curve(self) -> pd.DataFrame:
        """The demo LM's training curve (lm_metrics.jsonl beside its weights), or empty."""
        f = self._model_file("lm_metrics.jsonl")
        return pd.read_json(f, lines=True) if f is not None else pd.DataFrame()

    def card(self) -> dict[str, Any]:
        ev = self.meta.get("eval") or {}
        sae = self.meta["sae_cfg"]["sae"]
        feats = self.q("SELECT count(*) FILTER (WHERE dead) AS dead, " + self.headline_sql()).iloc[0]
        down = ev.get("downstream", {})
        return {
            "base model": (
                Path(self.meta["model"]).name if os.path.isabs(str(self.meta["model"])) else self.meta["model"]
            ),
            "layer": self.meta["layer"],
            "hook site": self.meta["site"],
            "d_in": self.meta["d_in"],
            "latents": sae["n_latents"],
            "architecture": sae["architecture"],
            "k": sae["k"],
            "FVU": ev.get("fvu"),
            "L0": ev.get("l0"),
            "dead % (eval)": None if ev.get("dead_fraction") is None else 100 * ev["dead_fraction"],
            "dead % (index)": 100 * int(feats["dead"]) / self.n_features,
            "% loss recovered (vs mean ablation)": down.get("pct_loss_recovered") if "ce_mean" in down else None,
            "ΔCE spliced (nats)": down.get("delta_ce_nats"),
            "features matching a concept (test)": int(feats["matches"]),
            "concepts matched": int(feats["concepts"]),
            "residue detectors % (live)": 100 * int(feats["detectors"]) / max(1, int(feats["live"])),
            "proteins indexed": self.meta["n_proteins"],
            "residues indexed": self.meta["n_residues"],
        }

    def headline_sql(self) -> str:
        """Headline counts, as InterPLM reports them: features that match a concept on test proteins
        (beating the trivial and the single-residue rule, not a residue detector), catch-all
        concepts excluded; amino-acid pseudo-concepts are never concepts."""
        good = "matches_concept AND best_concept NOT IN (SELECT concept FROM concepts WHERE catch_all)"
        return (
            f"count(*) FILTER (WHERE {good}) AS matches, count(DISTINCT best_concept) FILTER (WHERE {good}) AS"
            " concepts, count(*) FILTER (WHERE residue_detector AND NOT dead) AS detectors, count(*) FILTER (WHERE NOT"
            " dead) AS live FROM features"
        )

    def feature_counts(self) -> dict[str, int]:
        """Live, dead and all features; live residue detectors; features matching a non-catch-all concept
        (test); features whose best F1 is over 0.5."""
        good = "matches_concept AND best_concept NOT IN (SELECT concept FROM concepts WHERE catch_all)"
        row = self.q(
            f"""SELECT count(*) FILTER (WHERE NOT dead) AS live, count(*) FILTER (WHERE dead) AS dead, count(*) AS n,
            count(*) FILTER (WHERE residue_detector AND NOT dead) AS detectors, count(*) FILTER (WHERE {good}) AS
            matching,
            count(*) FILTER (WHERE best_f1 > 0.5) AS f1_05 FROM features"""
        ).iloc[0]
        return {k: int(v) for k, v in row.items()}

    def live_mask(self) -> np.ndarray:
        """[F] bool: the features that fired on the indexed proteins."""
        return self.q("SELECT NOT dead AS live FROM features ORDER BY feature")["live"].to_numpy(bool)

    def eligible_concepts(self) -> pd.DataFrame:
        """The concepts with enough support (not catch-all), with their baselines and best feature."""
        return self.q(
            """SELECT concept, recall_over, n_proteins, n_residues, n_domains, trivial_f1, aa_rule, aa_rule_f1,
            best_feature_f1, n_features_f1_05, n_features_beat_baselines FROM concepts
            WHERE eligible AND NOT catch_all ORDER BY n_features_beat_baselines DESC, concept"""
        )

    def feature_points(self) -> pd.DataFrame:
        """Per feature: its UMAP position (decoder directions), the concept it matches (or its verdict),
        frequency, cluster, state, label."""
        df = self.q("SELECT feature, umap_x, umap_y, freq_residue, cluster, dead FROM features ORDER BY feature")
        v = self.verdicts().set_index("feature")
        df["concept"], df["verdict"] = df["feature"].map(v["concept"]), df["feature"].map(v["verdict"])
        df["label"] = df["feature"].map(self.labels()).fillna(df["concept"])
        return df

    def concept_summary(self) -> pd.DataFrame:
        """Per concept: support, baselines on test proteins (learned windows included), and features beating them."""
        have = set(self.q("DESCRIBE concepts")["column_name"])
        opt = [(c, a) for c, a in (
            ("best_feature_lag", "its lag"), ("best_feature_f1_residue", "best feature per-residue F1 (test)"),
            ("best_feature_ci_lo", "95% interval vs closest baseline: low"),
            ("best_feature_ci_hi", "95% interval vs closest baseline: high"),
            ("top10_median_f1", "median test F1 of the top 10 (valid)"), ("window20_f1", "learned +-20 window F1"),
            ("window20_f1_residue", "learned +-20 window per-residue F1"), ("left20_f1", "learned left 20 window F1"),
            ("window10_f1", "learned +-10 window F1"), ("charge_f1", "K+R window F1"), ("motif_f1", "PROSITE motif F1"),
        ) if c in have]
        extra = "".join(f', {c} AS "{a}"' for c, a in opt)
        return self.q(
            f"""SELECT concept, source, best_feature AS "best feature",
                         best_feature_f1 AS "best feature F1 (test)"{extra},
                         best_baseline AS "best baseline (chosen on valid)", best_baseline_f1 AS "its F1 (test)",
                         baseline_max_f1 AS "best baseline F1 (test, any)", local_rule AS "best local-sequence rule",
                         local_rule_f1 AS "its F1",
                         hydropathy_f1 AS "hydropathy window F1", position_f1 AS "position rule F1", aa_window_f1 AS
                         "amino-acid window F1",
                         aa_rule AS "single-residue rule", aa_rule_f1 AS "its F1 ", trivial_f1 AS "fire everywhere F1",
                         n_features_beat_baselines AS "features beating every baseline (valid and test)", recall_over
                         AS "recall over",
                         n_proteins AS proteins, n_valid_proteins AS "valid proteins", n_test_proteins AS
                         "test proteins", n_residues AS residues, n_domains AS domains, eligible, catch_all AS
                         "catch-all"
                         FROM concepts ORDER BY eligible DESC, catch_all, n_features_beat_baselines DESC,
                         best_feature_f1 - baseline_max_f1 DESC"""
        )

    def window_models(self):
        """The learned window baselines the match rule used (``window_model.WindowModels``), or None."""
        if "window_models" not in self.tables:
            return None
        from esmsae.index.window_model import WindowModels

        return WindowModels.from_frame(self.q("SELECT * FROM window_models"))

    def _sae_side_rows(self, name: str) -> pd.DataFrame:  # a JSON file beside the SAE: {"rows": [...]}
        f = Path(str(self.meta.get("sae", "")))
        for d in (f, self.path.parent / f):
            if (d / name).exists():
                return pd.DataFrame(json.loads((d / name).read_text())["rows"])
        return pd.DataFrame()

    def external(self) -> pd.DataFrame:
        """The external check (``analysis.external``) of this index's SAE: frozen choices on a benchmark, or empty."""
        return self._sae_side_rows("external.json")

    def protein_concepts(self) -> pd.DataFrame:
        """Fold classes tested per protein (``analysis.protein_concepts``) for this index's SAE, or empty."""
        return self._sae_side_rows("protein_concepts.json")

    def representation(self) -> pd.DataFrame:
        """The representation card (``esmsae probe``) of this index's SAE, or empty."""
        f = Path(str(self.meta.get("sae", "")))
        for d in (f, self.path.parent / f):
            if (d / "representation.json").exists():
                rows = json.loads((d / "representation.json").read_text())["rows"]
                df = pd.DataFrame(rows)
                cols = ["task", "metric", "representation", "value", "minus_window10", "minus_window20", "fit_loss",
                        "n_train_proteins", "n_test_proteins"]
                return df[[c for c in cols if c in df.columns]]
        return pd.DataFrame()

    # -------------------------------------------------------- features
    KINDS = ("all", "context features", "residue detectors")

    def features(
        self,
        search: str = "",
        min_freq: float = 0.0,
        concept: str = "",
        hide_dead: bool = True,
        sort: str = "feature",
        descending: bool = False,
        limit: int = 5000,
        kind: str = "all",
    ) -> pd.DataFrame:
        where, params = ["1=1"], []
        if kind != "all":
            where.append("f.residue_detector" if kind == "residue detectors" else "NOT f.residue_detector")
        if hide_dead:
            where.append("NOT f.dead")
        if min_freq > 0:
            where.append("f.freq_protein >= ?")
            params.append(min_freq)
        df = self.q(
            f"""SELECT f.feature, f.description, f.best_aa_rule_f1, f.aa_top, f.aa_purity, f.freq_residue,
            f.freq_protein, f.max_act, f.top_group, f.cluster, f.residue_detector FROM features f
            WHERE {' AND '.join(where)}""",
            params,
        )
        v = self.verdicts().set_index("feature")  # one rule for every screen (index/verdicts.py)
        for col in ("concept", "verdict", "matches", "f1", "baseline", "baseline_f1"):
            df[col] = df["feature"].map(v[col])
        if concept:  # the features that match this concept
            df = df[df["concept"] == concept]
        labels = self.labels()
        df["label"] = df["feature"].map(labels).fillna(df["concept"])
        if search:  # what the user sees, ranked by relevance (index/search.py)
            from esmsae.index.search import search as find

            df = find(self, df, search, labels)
        if sort != "feature" and sort in df.columns:
            df = df.sort_values(sort, ascending=not descending, kind="stable")
        elif not search:
            df = df.sort_values("feature", kind="stable")
        cols = (
            ["feature", "label", "verdict", "description", "aa_top", "aa_purity"]
            + ["freq_residue", "freq_protein", "max_act", "top_group"]
            + (["relevance"] if search else [])
        )
        return df[cols].head(limit).reset_index(drop=True)

    def verdicts(self) -> pd.DataFrame:
        """Per feature: the concept it matches (or none, and why), computed once per reader
        (:func:`esmsae.index.verdicts.feature_verdicts`)."""
        if self._verdicts is None:
            from esmsae.index.verdicts import feature_verdicts

            self._verdicts = feature_verdicts(self)
        return self._verdicts

    def matched_concept_names(self) -> list[str]:
        """The concepts at least one feature matches (the browser's filter)."""
        return sorted(set(self.verdicts()["concept"]) - {""})

    def feature(self, f: int) -> dict[str, Any]:
        self._check(f)
        row = self.q("SELECT * FROM features WHERE feature = ?", [f]).iloc[0].to_dict()
        row["user_label"] = self.labels().get(f, "")
        return row

    def _check(self, f: int) -> None:
        if not 0 <= f < self.n_features:
            raise KeyError(
                f"feature {f} does not exist (this SAE has {self.n_features} features, 0..{self.n_features - 1})"
            )

    def concepts(self) -> list[str]:
        return self.q("SELECT concept FROM concepts ORDER BY concept")["concept"].tolist()

    def feature_hist(self, f: int) -> pd.DataFrame:
        return self.q("SELECT bin_lo, bin_hi, count FROM feature_hist WHERE feature = ? ORDER BY bin_lo", [f])

    def examples(self, f: int, kind: str = "top", n: int = 20) -> pd.DataFrame:
        """Top or quantile examples of a feature joined with their proteins."""
        self._check(f)
        if kind == "top":
            sql = """SELECT e.rank, e.max_act, e.max_pos, e.positions, e."values", p.* FROM top_examples e JOIN
            proteins p USING (pidx)
                     WHERE e.feature = ? ORDER BY e.rank LIMIT ?"""
        else:
            sql = """SELECT e.bin, e.bin_lo, e.bin_hi, e.max_act, e.max_pos, e.positions, e."values", p.* FROM
            quantile_examples e
                     JOIN proteins p USING (pidx) WHERE e.feature = ? ORDER BY e.bin DESC, e.max_act DESC LIMIT ?"""
        return self.q(sql, [f, n])

    def label_spans(self, pidxs) -> pd.DataFrame:
        """Per-residue labels of example proteins as spans (pidx, source, concept, starts, ends), or empty
        (an index built without --concepts, or before the table existed)."""
        pidxs = [int(p) for p in pidxs]
        if "label_spans" not in self.tables or not pidxs:
            return pd.DataFrame(columns=["pidx", "source", "concept", "starts", "ends"])
        return self.q(
            f"SELECT * FROM label_spans WHERE pidx IN ({', '.join('?' * len(pidxs))}) ORDER BY pidx, source, concept",
            pidxs,
        )

    def _opt_cols(self, table: str, cols) -> str:
        """"a, b, " for those of ``cols`` the table has (indexes built before a column existed lack it)."""
        return "".join(f"{c}, " for c in cols if c in set(self.q(f"DESCRIBE {table}")["column_name"]))

    def concept_table(self, f: int, n: int = 15) -> pd.DataFrame:
        """A feature's concepts: threshold and F1 chosen on valid proteins, F1 / precision / recall
        on test proteins, next to the trivial and the single-residue rule on the same residues."""
        return self.q(
            f"""SELECT concept, threshold, {self._opt_cols("concept_f1", ("lag", "f1_residue", "window_f1"))}
            f1_valid, f1 AS f1_test, precision, recall, trivial_f1, aa_rule_f1, beats_baselines,
                         tp_residues, hit_domains FROM concept_f1 WHERE feature = ? ORDER BY f1_valid DESC LIMIT ?""",
            [f, n],
        )

    def related(self, f: int) -> pd.DataFrame:
        """This feature's best matches in other SAEs (``match --index``, kept in the matches side file), or empty."""
        return matches.related(self.path, f)

    def match_summaries(self) -> pd.DataFrame:
        """Per other SAE and method: the match rate next to its chance level (``match --index``), or empty."""
        return matches.summaries(self.path)

    def group_table(self, f: int, grouping: str) -> pd.DataFrame:
        return self.q(
            """SELECT g.grp, g.n_proteins, coalesce(u.n_fire, 0) AS n_fire, coalesce(u.frac, 0) AS frac,
                         coalesce(u.mean_act, 0) AS mean_act, u.log_odds, coalesce(u.q, 1) AS q
                         FROM groups g LEFT JOIN group_usage u ON u.grouping = g.grouping AND u.grp = g.grp AND
                         u.feature = ?
                         WHERE g.grouping = ? ORDER BY frac DESC""",
            [f, grouping],
        )

    def groupings(self) -> list[str]:
        return self.q("SELECT DISTINCT grouping FROM groups ORDER BY grouping")["grouping"].tolist()

    def structure_examples(self, f: int, n: int = 5) -> pd.DataFrame:
        return self.q(
            """SELECT s.max_act, s.positions, s."values", p.* FROM structure_tracks s JOIN proteins p USING (pidx)
                         WHERE s.feature = ? ORDER BY s.max_act DESC LIMIT ?""",
            [f, n],
        )

    # -------------------------------------------------------- groups
    def group_usage(self, grouping: str) -> pd.DataFrame:
        return self.q(
            """SELECT grp, feature, n_proteins, n_fire, frac, mean_act, log_odds, p, q, q_composition,
            composition_driven
            FROM group_usage WHERE grouping = ?""",
            [grouping],
        )

    def cluster_profiles(self) -> pd.DataFrame:
        """What each embedding cluster holds (``index --cluster-proteins``), or empty."""
        if "cluster_profiles" not in self.tables:
            return pd.DataFrame()
        df = self.q("SELECT * FROM cluster_profiles ORDER BY n_proteins DESC, cluster")
        df["kingdoms"] = df["kingdoms"].map(
            lambda j: ", ".join(f"{k} {v:.0%}" for k, v in json.loads(j).items()) or "none recorded"
        )
        return df.rename(
            columns={
                "n_proteins": "proteins",
                "length_q1": "length Q1",
                "length_median": "median length",
                "length_q3": "length Q3",
                "no_kingdom": "proteins without a kingdom",
                "top_organisms": "top organisms",
                "top_protein_names": "most common protein names",
                "n_enriched_features": "features over-used here (log odds > 1; descriptive, untested)",
                "top_enriched_features": "most over-used features",
                "enriched_concepts": "concepts those features match",
            }
        )

    def group_coverage(self, grouping: str) -> tuple[int, int]:
        """(proteins in some group of this grouping, proteins indexed)."""
        n = int(
            self.q("SELECT coalesce(sum(n_proteins), 0) AS n FROM groups WHERE grouping = ?", [grouping])["n"].iloc[0]
        )
        return n, int(self.meta.get("n_proteins") or 0)

    def group_test(self) -> dict[str, Any]:
        """How this index tested enrichment: ``test`` ("cmh" or "fisher"), ``length_bins``, ``min_group_size``."""
        c = self.meta["index_config"]
        return {"test": c["group_test"], "length_bins": c["length_bins"], "min_group_size": c["min_group_size"]}

    def sequences(self, ids: list[str]) -> dict[str, str]:
        """id -> sequence for the proteins of the index among ``ids``."""
        if not ids:
            return {}
        df = self.q("SELECT id, sequence FROM proteins WHERE list_contains(?, id)", [list(ids)])
        return dict(zip(df["id"], df["sequence"]))

    def labels(self) -> dict[int, str]:
        """User-written labels (separate, writable file beside the index)."""
        return get_labels(self.path)

    def with_labels(self, df: pd.DataFrame) -> pd.DataFrame:
        f = self.q("SELECT feature, label, best_concept FROM features")
        out = df.merge(f, on="feature", how="left")
        out["label"] = out["feature"].map(self.labels()).fillna(out["label"])
        return out


class LabelStoreBusy(RuntimeError):
    """The labels file stayed locked (another process writing) through every retry."""


_LABELS_LOCK = threading.Lock()  # sessions are threads of one process: one labels connection at a time
_LABELS_DDL = "CREATE TABLE IF NOT EXISTS labels (feature INTEGER PRIMARY KEY, label VARCHAR, updated DOUBLE)"


def _with_labels(index_path: Path, fn):
    """Run ``fn(con)`` on the labels file. Reads and writes use one connection configuration
    (read-write): DuckDB refuses a read-only and a read-write connection to one file in one
    process, which made two sessions saving and reading labels at once fail. Another process
    holding the file's lock is waited for, then reported as :class:`LabelStoreBusy`."""
    p = labels_path(index_path)
    last: Exception | None = None
    with _LABELS_LOCK:
        for attempt in range(30):
            try:
                con = duckdb.connect(str(p))
            except (duckdb.IOException, duckdb.ConnectionException) as e:
                last = e
                time.sleep(min(0.02 * (attempt + 1), 0.3))
                continue
            try:
                con.execute(_LABELS_DDL)
                return fn(con)
            finally:
                con.close()
    raise LabelStoreBusy(f"the labels file {p} is locked by another process; try again ({last})")


def get_labels(index_path: Path) -> dict[int, str]:
    if not labels_path(index_path).exists():
        return {}
    return _with_labels(
        index_path, lambda con: {int(f): t for f, t in con.execute("SELECT feature, label FROM labels").fetchall() if t}
    )


def set_label(index_path: Path, feature: int, text: str) -> None:
    _with_labels(index_path, lambda con: con.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?)",
                                                     [int(feature), text.strip()[:200], time.time()]))


def reference_stats(index_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(max_F, idf_F, meta) of an index: each feature's largest activation and IDF over the indexed
    proteins, and the index's meta (``sae_sha256`` names the SAE weights it was built from)."""
    idx = FeatureIndex(index_path)
    try:
        df = idx.q("SELECT feature, max_act, idf FROM features ORDER BY feature")
        return df["max_act"].to_numpy(np.float32), df["idf"].to_numpy(np.float32), idx.meta
    finally:
        idx.con.close()
