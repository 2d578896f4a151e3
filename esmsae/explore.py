"""What the app shows: runs, index queries, figures and HTML, all testable without Streamlit.

Pages in ``pages/`` only lay these out. The DuckDB index is opened read-only (a job
writing a new index renames it into place, so readers never see half a file); user
feature labels live in a separate writable file (:func:`esmsae.index.labels_path`).
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from .index.tables import labels_path
from .paths import shared_data, workspace  # noqa: F401 (workspace: used by the pages)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"



@dataclass(frozen=True)
class Run:
    name: str
    sae_dir: Path
    index: Path | None

    @property
    def label(self) -> str:
        return self.name + ("" if self.index and self.index.exists() else " (no index yet)")


def list_runs(ws: Path | None = None, demo: Path | None = None) -> list[Run]:
    """The demo bundle first, then every SAE checkpoint under the workspace (newest first)."""
    runs = []
    demo = Path(os.environ.get("ESMSAE_DEMO", DEMO)) if demo is None else demo
    if (demo / "sae" / "cfg.json").exists():
        runs.append(Run("demo", demo / "sae", demo / "index.duckdb"))
    ws = workspace() if ws is None else ws
    if ws.exists():
        found = []
        # checkpoint folders 1-3 levels down (a job's run/L3_resid, or whatever `python -m esmsae
        # train|import --out` wrote); the index is index.duckdb there, or another .duckdb file
        for pattern in ("*/cfg.json", "*/*/cfg.json", "*/*/*/cfg.json"):
            for cfg in ws.glob(pattern):
                ck = cfg.parent
                if (
                    any(part.endswith((".tmp", ".old")) for part in ck.relative_to(ws).parts)
                    or not (ck / "sae.safetensors").exists()
                ):
                    continue
                found.append((cfg.stat().st_mtime, Run(ck.relative_to(ws).as_posix(), ck, index_file(ck))))
        runs += [r for _, r in sorted(found, key=lambda x: -x[0])]
    return runs


def index_file(ck: Path) -> Path:
    """The feature index of a checkpoint folder: index.duckdb, else its newest other .duckdb file."""
    if (ck / "index.duckdb").exists():
        return ck / "index.duckdb"
    others = sorted(
        (p for p in ck.glob("*.duckdb") if not p.name.endswith(".labels.duckdb")), key=lambda p: -p.stat().st_mtime
    )
    return others[0] if others else ck / "index.duckdb"


# ---------------------------------------------------------------- the index
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
        self.con.execute("ATTACH ? AS idx (READ_ONLY)", [str(self.path)])
        self.con.execute("USE idx")
        self.meta = {k: json.loads(v) for k, v in self.con.execute("SELECT key, value FROM meta").fetchall()}
        self.n_features = int(self.meta["n_latents"])

    @functools.cached_property
    def feature_columns(self) -> set[str]:
        """The features table's columns (what this index version has), read once, when first asked."""
        return set(self.q("SELECT * FROM features LIMIT 0").columns)

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

    def precision_note(self) -> str:
        """One line when this index encoded with a bf16 SAE matmul (``--encode-dtype bfloat16``):
        its values are not the inspector's (fp32) to the last digit. Empty for an exact index."""
        if (self.meta.get("index_config") or {}).get("encode_dtype", "float32") == "float32":
            return ""
        return (
            "This index ran the SAE encoder's matmul in bfloat16 (--encode-dtype bfloat16). The sequence inspector"
            " encodes in float32, so its activations can differ from the index's by about 0.2% (median of per-feature"
            " maxima on the demo), and a latent at a residue's top-k boundary can change (0.1% of latents;"
            " bench/encode_precision.py)."
        )

    def lm_note(self) -> str:
        """One line on the protein LM when esmsae trained it (the demo): what it is, its <mask>
        perplexity next to unigram, and real ESM-2 8M for scale. Empty for a hub model."""
        beside = self.path.parent / "lm_eval.json"  # a bundle's LM figures (UniRep: next-residue perplexity)
        if beside.exists():
            try:
                ev = json.loads(beside.read_text())
                return (
                    f"Protein LM: {ev.get('about', ev.get('model', ''))} Next-residue perplexity on {ev['n_proteins']}"
                    f" held-out UniProtKB proteins: {ev['next_ppl']:.2f}, against {ev['bigram_ppl']:.2f} for a bigram"
                    f" (the residue before) and {ev['unigram_ppl']:.2f} for residue frequencies alone."
                )
            except (KeyError, ValueError, OSError):
                return ""
        f = self._model_file("lm_eval.json")
        if f is None:
            return ""
        try:
            ev = json.loads(f.read_text())
            return (
                "Protein LM: the ESM-2 8M architecture trained by esmsae on"
                f" {ev.get('tokens_total', ev['tokens_seen']) / 1e6:.0f} M tokens of the shared proteins (CPU)."
                f" Held-out <mask> perplexity {ev['masked_ppl']:.2f} vs {ev['masked_unigram_ppl']:.2f} for residue"
                " frequencies alone; real ESM-2 8M reaches about 10-10.5 (reported), so this model knows far less"
                " about proteins."
            )
        except (KeyError, ValueError, OSError):
            return ""

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

    def has_controls(self) -> bool:
        """Whether this index has the amino-acid control and the valid/test split (esmsae >= 0.4)."""
        return "matches_concept" in self.feature_columns

    def headline_sql(self) -> str:
        """Headline counts, as InterPLM reports them: features that match a concept on test proteins
        (beating the trivial and the single-residue rule, not a residue detector), catch-all
        concepts excluded; amino-acid pseudo-concepts are never concepts."""
        if not self.has_controls():
            return (
                "count(*) FILTER (WHERE best_f1 > 0.5) AS matches, count(DISTINCT best_concept) FILTER (WHERE best_f1 >"
                " 0.5) AS concepts, 0 AS detectors, count(*) FILTER (WHERE NOT dead) AS live FROM features"
            )
        good = "matches_concept AND best_concept NOT IN (SELECT concept FROM concepts WHERE catch_all)"
        return (
            f"count(*) FILTER (WHERE {good}) AS matches, count(DISTINCT best_concept) FILTER (WHERE {good}) AS"
            " concepts, count(*) FILTER (WHERE residue_detector AND NOT dead) AS detectors, count(*) FILTER (WHERE NOT"
            " dead) AS live FROM features"
        )

    def concept_summary(self) -> pd.DataFrame:
        """Per concept: support, baselines on test proteins, and features beating them."""
        if not self.has_controls():
            return self.q("SELECT concept, source, n_proteins, n_residues, n_domains FROM concepts ORDER BY concept")
        if "best_baseline" not in self.q("SELECT * FROM concepts LIMIT 0").columns:
            return self.q(
                """SELECT concept, source, recall_over, eligible, catch_all, n_proteins, n_residues, n_domains,
                trivial_f1,
                             aa_rule, aa_rule_f1, best_feature, best_feature_f1, n_features_f1_05,
                             n_features_beat_baselines
                             FROM concepts ORDER BY eligible DESC, catch_all, n_features_beat_baselines DESC, concept"""
            )
        return self.q(
            """SELECT concept, source, best_feature AS "best feature", best_feature_f1 AS "best feature F1 (test)",
                         best_baseline AS "best baseline (chosen on valid)", best_baseline_f1 AS "its F1 (test)",
                         baseline_max_f1 AS "best baseline F1 (test, any)", local_rule AS "best local-sequence rule",
                         local_rule_f1 AS "its F1",
                         hydropathy_f1 AS "hydropathy window F1", position_f1 AS "position rule F1", aa_window_f1 AS
                         "amino-acid window F1",
                         aa_rule AS "single-residue rule", aa_rule_f1 AS "its F1 ", trivial_f1 AS "fire everywhere F1",
                         n_features_beat_baselines AS "features beating every baseline (valid and test)", recall_over
                         AS "recall over",
                         n_proteins AS proteins, n_residues AS residues, n_domains AS domains, eligible, catch_all AS
                         "catch-all"
                         FROM concepts ORDER BY eligible DESC, catch_all, n_features_beat_baselines DESC,
                         best_feature_f1 - baseline_max_f1 DESC"""
        )

    def representation(self) -> pd.DataFrame:
        """The representation card (``esmsae probe``) of this index's SAE, or empty."""
        f = Path(str(self.meta.get("sae", "")))
        for d in (f, self.path.parent / f):
            if (d / "representation.json").exists():
                rows = json.loads((d / "representation.json").read_text())["rows"]
                return pd.DataFrame(rows)[
                    [
                        "task",
                        "metric",
                        "representation",
                        "value",
                        "minus_window10",
                        "n_train_proteins",
                        "n_test_proteins",
                    ]
                ]
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
        controls = self.has_controls()
        if kind != "all" and controls:
            where.append("f.residue_detector" if kind == "residue detectors" else "NOT f.residue_detector")
        if hide_dead:
            where.append("NOT f.dead")
        if min_freq > 0:
            where.append("f.freq_protein >= ?")
            params.append(min_freq)
        if concept:
            where.append("f.best_concept = ?")
            params.append(concept)
        extra = "f.best_aa_rule_f1, f.aa_top, f.aa_purity," if controls else ""
        described = "search_text" in self.feature_columns
        extra += " f.description, f.search_text," if described else ""
        df = self.q(
            f"""SELECT f.feature, f.label AS auto_label, f.best_concept, f.best_f1, {extra} f.freq_residue,
            f.freq_protein, f.max_act,
                        f.top_group, f.cluster FROM features f WHERE {' AND '.join(where)}""",
            params,
        )
        labels = self.labels()
        df["label"] = df["feature"].map(labels).fillna(df["auto_label"])
        if search:
            # every term in the description, concept, top proteins' ids / names or the user label
            # (DuckDB's FTS extension is not installable offline: see index/describe.py)
            from .index.describe import search_terms

            terms = search_terms(search)
            hay = (
                (df["search_text"] if described else df["best_concept"]).fillna("").str.lower()
                + " | "
                + df["label"].fillna("").str.lower()
            )
            hit = np.ones(len(df), bool)
            for t in terms:
                hit &= hay.str.contains(t, regex=False).to_numpy()
            s = search.strip()
            if s.isdigit():
                hit |= (df["feature"] == int(s)).to_numpy()
            df = df[hit]
        if sort in df.columns:
            df = df.sort_values(sort, ascending=not descending, kind="stable")
        cols = (
            ["feature", "label"]
            + (["description"] if described else [])
            + ["best_concept", "best_f1"]
            + (["best_aa_rule_f1", "aa_top", "aa_purity"] if controls else [])
            + ["freq_residue", "freq_protein", "max_act", "top_group"]
        )
        return df[cols].head(limit).reset_index(drop=True)

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

    def concept_table(self, f: int, n: int = 15) -> pd.DataFrame:
        """A feature's concepts: threshold and F1 chosen on valid proteins, F1 / precision / recall
        on test proteins, next to the trivial and the single-residue rule on the same residues."""
        if not self.has_controls():
            return self.q(
                """SELECT concept, threshold, precision, recall_domain, recall_residue, f1, tp_residues, hit_domains
                             FROM concept_f1 WHERE feature = ? ORDER BY f1 DESC LIMIT ?""",
                [f, n],
            )
        return self.q(
            """SELECT concept, threshold, f1_valid, f1 AS f1_test, precision, recall, trivial_f1, aa_rule_f1,
            beats_baselines,
                         tp_residues, hit_domains FROM concept_f1 WHERE feature = ? ORDER BY f1_valid DESC LIMIT ?""",
            [f, n],
        )

    def related(self, f: int) -> pd.DataFrame:
        """This feature's best matches in other SAEs (stored by ``match --index``), or empty."""
        tables = set(self.q("SELECT table_name FROM information_schema.tables")["table_name"])
        if "feature_matches" not in tables:
            return pd.DataFrame()
        return self.q(
            """SELECT other_sae, method, rank, other_feature, score, split FROM feature_matches WHERE feature = ?
                         ORDER BY other_sae, method, rank""",
            [f],
        )

    def match_summaries(self) -> pd.DataFrame:
        """Per other SAE and method: the match rate next to its chance level (``match --index``)."""
        tables = set(self.q("SELECT table_name FROM information_schema.tables")["table_name"])
        if "match_summaries" not in tables:
            return pd.DataFrame()
        return self.q("SELECT * FROM match_summaries ORDER BY other_sae, method")

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
        cols = set(self.q("SELECT * FROM group_usage LIMIT 0").columns)
        comp = ", q_composition, composition_driven" if "composition_driven" in cols else ""
        return self.q(f"""SELECT grp, feature, n_proteins, n_fire, frac, mean_act, log_odds, p, q{comp} FROM group_usage
                          WHERE grouping = ?""", [grouping])

    def cluster_profiles(self) -> pd.DataFrame:
        """What each embedding cluster holds (``index --cluster-proteins``), or empty."""
        tables = set(self.q("SELECT table_name FROM information_schema.tables")["table_name"])
        if "cluster_profiles" not in tables:
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
                "n_enriched_features": "enriched features (q < 0.05)",
                "top_enriched_features": "most enriched features",
                "enriched_concepts": "concepts of its enriched features",
            }
        )

    def group_coverage(self, grouping: str) -> tuple[int, int]:
        """(proteins in some group of this grouping, proteins indexed)."""
        n = int(
            self.q("SELECT coalesce(sum(n_proteins), 0) AS n FROM groups WHERE grouping = ?", [grouping])["n"].iloc[0]
        )
        return n, int(self.meta.get("n_proteins") or 0)

    def group_test_note(self) -> str:
        """One line on how this index tested enrichment (older indexes: Fisher, unstratified)."""
        c = self.meta.get("index_config") or {}
        if c.get("group_test", "fisher") == "cmh":
            return (
                f"One-sided Cochran-Mantel-Haenszel test over {c.get('length_bins', 5)} protein-length bins (firing"
                " grows with length) against all other groups; effect size = Mantel-Haenszel log odds ratio;"
                f" Benjamini-Hochberg FDR (q). Groups under {c.get('min_group_size', 1)} proteins are not tested."
            )
        return (
            "One-sided Fisher's exact test against all other groups (not controlled for protein length),"
            " Benjamini-Hochberg FDR (q); effect size = log odds ratio."
        )

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


def group_heatmap(usage: pd.DataFrame, n_features: int = 40, value: str = "frac") -> pd.DataFrame:
    """Groups x features matrix of the most group-specific features (largest spread of usage)."""
    if usage.empty:
        return pd.DataFrame()
    m = usage.pivot_table(index="grp", columns="feature", values=value, fill_value=0.0)
    spread = (m.max(0) - m.min(0)).sort_values(ascending=False)
    return m[spread.index[:n_features]]


def coverage_note(grouping: str, covered: int, total: int) -> str:
    """A warning when a grouping covers few of the indexed proteins (empty when it covers most)."""
    if total <= 0 or covered >= 0.5 * total:
        return ""
    how = (
        "pass --taxonomy (a taxid -> lineage file) or a grouping file (--groups), or give FASTA headers with OX=taxid /"
        " TaxID=; organisms esmsae knows by name are mapped to their kingdom"
        if grouping in ("kingdom", "organism") or grouping.startswith("lineage")
        else "pass a grouping file that lists more of the indexed proteins (--groups)"
    )
    return (
        f"{total - covered:,} of {total:,} indexed proteins have no {grouping}: only {covered:,} are compared here. To"
        f" cover more, {how}."
    )


def enriched(usage: pd.DataFrame, group: str, n: int = 20, max_q: float = 0.05) -> pd.DataFrame:
    """The group's features with FDR q <= max_q, by effect size (log odds)."""
    df = usage[(usage.grp == group) & (usage.q <= max_q)]
    return df.sort_values("log_odds", ascending=False).head(n).reset_index(drop=True)


def compare(usage: pd.DataFrame, a: str, b: str, n: int = 25) -> pd.DataFrame:
    """Features whose usage differs most between two groups."""
    m = usage[usage.grp.isin([a, b])].pivot_table(index="feature", columns="grp", values="frac", fill_value=0.0)
    for g in (a, b):
        if g not in m:
            m[g] = 0.0
    m = m[[a, b]] if a != b else m[[a]]
    m["difference"] = m[a] - m[b]
    return m.reindex(m["difference"].abs().sort_values(ascending=False).index).head(n).reset_index()




def display_scale(info: dict[str, Any]) -> tuple[float, float, str]:
    """(max, IDF, where they come from) for the max / max x IDF display scales of a feature: the
    reference statistics shipped with the SAE (Biohub's max / idf, InterPLM's folded max) when
    the index recorded them, so two indexes of one SAE agree; otherwise this index's own."""
    rm, ri = info.get("ref_max"), info.get("ref_idf")
    if rm is not None and np.isfinite(rm):
        return (
            float(rm),
            float(ri) if ri is not None and np.isfinite(ri) else float(info["idf"]),
            "reference statistics shipped with the SAE",
        )
    return float(info["max_act"]), float(info["idf"]), "this index's proteins"


def normalise(values: np.ndarray, fmax: float, idf: float, mode: str) -> np.ndarray:
    v = np.asarray(values, float)
    if mode == "raw":
        return v
    v = v / fmax if fmax > 0 else v * 0
    return v * idf if mode == "idf" else v


class FeatureScale:
    """The activation scale a feature's tracks are drawn in (raw, / max, / max x IDF), with the
    colour-scale maximum; max and IDF from :func:`display_scale`."""

    def __init__(self, info: dict[str, Any], mode: str):
        self.fmax, self.idf, self.source = display_scale(info)
        self.mode = mode
        self.vmax = float(self(np.array([info["max_act"]]))[0]) or 1.0

    def __call__(self, values) -> np.ndarray:
        return normalise(np.asarray(values), self.fmax, self.idf, self.mode)


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


# ---------------------------------------------------------------- structures
def structure_file(index: FeatureIndex, rel: str) -> Path | None:
    """Locate a structure named in the index: in the bundle (gzipped) or in shared/data."""
    for base in (index.path.parent / "structures", shared_data() / "structures"):
        for cand in (base / (rel + ".gz"), base / rel):
            if cand.exists():
                return cand
    return None


def read_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8", errors="replace")
