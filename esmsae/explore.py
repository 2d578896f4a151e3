"""What the app shows: runs, index queries, figures and HTML, all testable without Streamlit.

Pages in ``pages/`` only lay these out. The DuckDB index is opened read-only (a job
writing a new index renames it into place, so readers never see half a file); user
feature labels live in a separate writable file (:func:`esmsae.index.labels_path`).
"""
from __future__ import annotations

import gzip
import html
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from .index import labels_path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
SHARED_STRUCTURES = ROOT.parent / "shared" / "data" / "structures"



def workspace() -> Path:
    """Folder holding training runs started from the app (``ESMSAE_WORKSPACE``, default ./workspace)."""
    return Path(os.environ.get("ESMSAE_WORKSPACE", ROOT / "workspace")).resolve()


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
        for cfg in ws.glob("*/*/cfg.json"):
            ck = cfg.parent
            if ck.name.endswith((".tmp", ".old")):
                continue
            found.append((cfg.stat().st_mtime, Run(f"{ck.parent.name}/{ck.name}", ck, ck / "index.duckdb")))
        runs += [r for _, r in sorted(found, key=lambda x: -x[0])]
    return runs


# ---------------------------------------------------------------- the index
class FeatureIndex:
    """Read-only view of an index file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no feature index at {self.path} (build one with `python -m esmsae index`)")
        self.con = duckdb.connect(str(self.path), read_only=True)
        self.meta = {k: json.loads(v) for k, v in self.con.execute("SELECT key, value FROM meta").fetchall()}
        self.n_features = int(self.meta["n_latents"])

    def q(self, sql: str, params: list | None = None) -> pd.DataFrame:
        # one cursor per query: Streamlit runs sessions in threads
        return self.con.cursor().execute(sql, params or []).df()

    # -------------------------------------------------------- run card
    def card(self) -> dict[str, Any]:
        ev = self.meta.get("eval") or {}
        sae = self.meta["sae_cfg"]["sae"]
        feats = self.q("SELECT count(*) FILTER (WHERE dead) AS dead, count(*) FILTER (WHERE best_f1 > 0.5) AS f1_05, "
                       "count(DISTINCT best_concept) FILTER (WHERE best_f1 > 0.5) AS concepts FROM features").iloc[0]
        down = ev.get("downstream", {})
        return {
            "base model": Path(self.meta["model"]).name if os.path.isabs(str(self.meta["model"])) else self.meta["model"],
            "layer": self.meta["layer"], "hook site": self.meta["site"], "d_in": self.meta["d_in"],
            "latents": sae["n_latents"], "architecture": sae["architecture"], "k": sae["k"],
            "FVU": ev.get("fvu"), "L0": ev.get("l0"), "dead % (eval)": None if ev.get("dead_fraction") is None else 100 * ev["dead_fraction"],
            "dead % (index)": 100 * int(feats["dead"]) / self.n_features,
            "% loss recovered": down.get("pct_loss_recovered"),
            "features with concept F1 > 0.5": int(feats["f1_05"]), "concepts covered": int(feats["concepts"]),
            "proteins indexed": self.meta["n_proteins"], "residues indexed": self.meta["n_residues"],
        }

    # -------------------------------------------------------- features
    def features(self, search: str = "", min_freq: float = 0.0, concept: str = "", hide_dead: bool = True, sort: str = "feature",
                 descending: bool = False, limit: int = 5000) -> pd.DataFrame:
        where, params = ["1=1"], []
        if hide_dead:
            where.append("NOT f.dead")
        if min_freq > 0:
            where.append("f.freq_protein >= ?")
            params.append(min_freq)
        if concept:
            where.append("f.best_concept = ?")
            params.append(concept)
        df = self.q(f"""SELECT f.feature, f.label AS auto_label, f.best_concept, f.best_f1, f.freq_residue, f.freq_protein, f.max_act,
                        f.top_group, f.cluster FROM features f WHERE {' AND '.join(where)}""", params)
        labels = self.labels()
        df["label"] = df["feature"].map(labels).fillna(df["auto_label"])
        if search:
            s = search.strip().lower()
            hit = df["label"].str.lower().str.contains(s, regex=False) | df["best_concept"].str.lower().str.contains(s, regex=False)
            if s.isdigit():
                hit |= df["feature"] == int(s)
            df = df[hit]
        if sort in df.columns:
            df = df.sort_values(sort, ascending=not descending, kind="stable")
        cols = ["feature", "label", "best_concept", "best_f1", "freq_residue", "freq_protein", "max_act", "top_group"]
        return df[cols].head(limit).reset_index(drop=True)

    def feature(self, f: int) -> dict[str, Any]:
        self._check(f)
        row = self.q("SELECT * FROM features WHERE feature = ?", [f]).iloc[0].to_dict()
        row["user_label"] = self.labels().get(f, "")
        return row

    def _check(self, f: int) -> None:
        if not 0 <= f < self.n_features:
            raise KeyError(f"feature {f} does not exist (this SAE has {self.n_features} features, 0..{self.n_features - 1})")

    def concepts(self) -> list[str]:
        return self.q("SELECT concept FROM concepts ORDER BY concept")["concept"].tolist()

    def feature_hist(self, f: int) -> pd.DataFrame:
        return self.q("SELECT bin_lo, bin_hi, count FROM feature_hist WHERE feature = ? ORDER BY bin_lo", [f])

    def examples(self, f: int, kind: str = "top", n: int = 20) -> pd.DataFrame:
        """Top or quantile examples of a feature joined with their proteins."""
        self._check(f)
        if kind == "top":
            sql = """SELECT e.rank, e.max_act, e.max_pos, e.positions, e."values", p.* FROM top_examples e JOIN proteins p USING (pidx)
                     WHERE e.feature = ? ORDER BY e.rank LIMIT ?"""
        else:
            sql = """SELECT e.bin, e.bin_lo, e.bin_hi, e.max_act, e.max_pos, e.positions, e."values", p.* FROM quantile_examples e
                     JOIN proteins p USING (pidx) WHERE e.feature = ? ORDER BY e.bin DESC, e.max_act DESC LIMIT ?"""
        return self.q(sql, [f, n])

    def concept_table(self, f: int, n: int = 15) -> pd.DataFrame:
        return self.q("""SELECT concept, threshold, precision, recall_domain, recall_residue, f1, tp_residues, hit_domains
                         FROM concept_f1 WHERE feature = ? ORDER BY f1 DESC LIMIT ?""", [f, n])

    def group_table(self, f: int, grouping: str) -> pd.DataFrame:
        return self.q("""SELECT g.grp, g.n_proteins, coalesce(u.n_fire, 0) AS n_fire, coalesce(u.frac, 0) AS frac,
                         coalesce(u.mean_act, 0) AS mean_act, u.log_odds, coalesce(u.q, 1) AS q
                         FROM groups g LEFT JOIN group_usage u ON u.grouping = g.grouping AND u.grp = g.grp AND u.feature = ?
                         WHERE g.grouping = ? ORDER BY frac DESC""", [f, grouping])

    def groupings(self) -> list[str]:
        return self.q("SELECT DISTINCT grouping FROM groups ORDER BY grouping")["grouping"].tolist()

    def structure_examples(self, f: int, n: int = 5) -> pd.DataFrame:
        return self.q("""SELECT s.max_act, s.positions, s."values", p.* FROM structure_tracks s JOIN proteins p USING (pidx)
                         WHERE s.feature = ? ORDER BY s.max_act DESC LIMIT ?""", [f, n])

    # -------------------------------------------------------- groups
    def group_usage(self, grouping: str) -> pd.DataFrame:
        return self.q("""SELECT grp, feature, n_proteins, n_fire, frac, mean_act, log_odds, p, q FROM group_usage
                         WHERE grouping = ?""", [grouping])

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
        return float(rm), float(ri) if ri is not None and np.isfinite(ri) else float(info["idf"]), "reference statistics shipped with the SAE"
    return float(info["max_act"]), float(info["idf"]), "this index's proteins"


def normalise(values: np.ndarray, fmax: float, idf: float, mode: str) -> np.ndarray:
    v = np.asarray(values, float)
    if mode == "raw":
        return v
    v = v / fmax if fmax > 0 else v * 0
    return v * idf if mode == "idf" else v


def get_labels(index_path: Path) -> dict[int, str]:
    p = labels_path(index_path)
    if not p.exists():
        return {}
    for _ in range(5):
        try:
            con = duckdb.connect(str(p), read_only=True)
            try:
                return {int(f): t for f, t in con.execute("SELECT feature, label FROM labels").fetchall() if t}
            finally:
                con.close()
        except duckdb.IOException:  # a writer holds the file for a moment
            time.sleep(0.1)
    return {}


def set_label(index_path: Path, feature: int, text: str) -> None:
    p = labels_path(index_path)
    con = duckdb.connect(str(p))
    try:
        con.execute("CREATE TABLE IF NOT EXISTS labels (feature INTEGER PRIMARY KEY, label VARCHAR, updated DOUBLE)")
        con.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?)", [int(feature), text.strip()[:200], time.time()])
    finally:
        con.close()


# ---------------------------------------------------------------- structures
def structure_file(index: FeatureIndex, rel: str) -> Path | None:
    """Locate a structure named in the index: in the bundle (gzipped) or in shared/data."""
    for base in (index.path.parent / "structures", SHARED_STRUCTURES):
        for cand in (base / (rel + ".gz"), base / rel):
            if cand.exists():
                return cand
    return None


def read_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8", errors="replace")


class StructureError(ValueError):
    pass


def parse_structure(text: str, fmt: str) -> dict[str, tuple[str, list[int]]]:
    """Chains of a PDB / mmCIF text -> {chain: (sequence, residue numbers)} (amino acids only)."""
    import warnings

    from Bio.PDB import MMCIFParser, PDBParser
    from Bio.PDB.Polypeptide import is_aa
    from Bio.SeqUtils import seq1

    if not text.strip():
        raise StructureError("the structure file is empty")
    parser = MMCIFParser(QUIET=True) if fmt in ("cif", "mmcif") else PDBParser(QUIET=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = parser.get_structure("x", io.StringIO(text))
    except Exception as e:  # Bio raises a variety of errors on broken files
        raise StructureError(f"could not read this {fmt.upper()} file: {e}") from e
    models = list(s)
    if not models:
        raise StructureError(f"no models with atoms in this {fmt.upper()} file")
    chains = {}
    for ch in models[0]:
        # standard residues, plus modified amino acids written as HETATM (e.g. TPO), as in the atom sequence
        res = [r for r in ch if (r.id[0] == " " and is_aa(r, standard=False)) or (r.id[0].startswith("H_") and "CA" in r and "N" in r)]
        if res:
            seq = "".join(seq1(r.get_resname(), undef_code="X") for r in res)
            chains[ch.id] = (seq, [r.id[1] for r in res])
    if not chains:
        raise StructureError(f"no protein chains found in this {fmt.upper()} file")
    return chains


def structure_html(text: str, fmt: str, chain: str, resi: list[int], values: np.ndarray, vmax: float, height: int = 420,
                   js_src: str = "/app/static/3Dmol-min.js") -> str:
    """A 3Dmol.js viewer (served locally, no CDN) with the chain's cartoon coloured by activation."""
    vmax = vmax if vmax > 0 else 1.0
    colors = {int(r): _hex(float(v) / vmax) for r, v in zip(resi, values)}
    payload = json.dumps(text)
    return f"""<!doctype html><html><head><meta charset="utf-8"><script src="{js_src}"></script>
<style>html,body{{margin:0;height:100%;background:#fff}}#v{{width:100%;height:{height}px;position:relative}}
#err{{font:14px sans-serif;color:#a00;padding:8px}}</style></head><body><div id="v"></div><div id="err"></div><script>
(function(){{
  if (typeof $3Dmol === "undefined") {{ document.getElementById("err").textContent = "3Dmol.js could not be loaded from {js_src}"; return; }}
  var v = $3Dmol.createViewer(document.getElementById("v"), {{backgroundColor: "white"}});
  v.addModel({payload}, "{'cif' if fmt in ('cif', 'mmcif') else 'pdb'}");
  var colors = {json.dumps(colors)};
  v.setStyle({{}}, {{}});  // other chains hidden: the view is about this chain
  v.setStyle({{chain: {json.dumps(chain)}, hetflag: false}}, {{cartoon: {{colorfunc: function(a) {{ return colors[a.resi] || "#f2f2f2"; }}}}}});
  v.zoomTo({{chain: {json.dumps(chain)}}}); v.render();
  window.esmsaeViewer = v;
}})();
</script></body></html>"""


def _hex(x: float) -> str:
    """White -> red ramp for an activation in [0, 1]."""
    x = min(max(x, 0.0), 1.0)
    g = int(round(245 * (1 - x) + 10))
    return f"#ff{g:02x}{g:02x}" if x > 0 else "#f2f2f2"


# ---------------------------------------------------------------- tracks and figures
def track_html(sequence: str, positions, values, vmax: float, highlight: int | None = None, title: str = "") -> str:
    """Per-residue activation track: every residue coloured by activation; hover shows
    residue, position (1-based) and value."""
    vals = np.zeros(len(sequence))
    pos = np.asarray(positions, int)
    if len(pos):
        vals[pos] = np.asarray(values, float)
    vmax = vmax if vmax > 0 else 1.0
    cells = []
    for i, aa in enumerate(sequence):
        v = vals[i]
        style = f"background:{_hex(v / vmax)}" + (";outline:2px solid #333" if highlight == i else "")
        cells.append(f'<span title="{aa}{i + 1}: {v:.3f}" style="{style}">{html.escape(aa)}</span>')
    head = f'<div class="esmsae-track-title">{html.escape(title)}</div>' if title else ""
    return (f'{head}<div class="esmsae-track" style="font-family:monospace;font-size:12px;line-height:1.5;word-break:break-all;'
            f'letter-spacing:0.5px">{"".join(cells)}</div>')


def freq_histogram(features: pd.DataFrame):
    import plotly.express as px

    df = features[features["freq_residue"] > 0].assign(log10_freq=lambda d: np.log10(d["freq_residue"]))
    fig = px.histogram(df, x="log10_freq", nbins=50, labels={"log10_freq": "log10 firing frequency (per residue)"})
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), title="Feature frequency")
    return fig


def feature_map(index: FeatureIndex, color: str = "best_concept"):
    """UMAP of decoder directions, one WebGL point per feature."""
    import plotly.express as px

    df = index.q("SELECT feature, umap_x, umap_y, best_concept, best_f1, freq_residue, cluster, dead, label FROM features")
    df["log10_freq"] = np.log10(df["freq_residue"].clip(lower=1e-7))
    df["best_concept"] = np.where(df["best_f1"] > 0.5, df["best_concept"], "(none > 0.5)")
    c = "log10_freq" if color == "frequency" else "best_concept"
    fig = px.scatter(df, x="umap_x", y="umap_y", color=c, hover_data=["feature", "label", "best_f1", "freq_residue"],
                     render_mode="webgl", custom_data=["feature"])
    fig.update_traces(marker=dict(size=4))
    fig.update_layout(height=520, margin=dict(l=10, r=10, t=30, b=10), title="Feature map (UMAP of decoder directions)",
                      legend=dict(font=dict(size=9)))
    return fig


def activation_hist(hist: pd.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=np.sqrt(hist["bin_lo"].clip(lower=1e-4) * hist["bin_hi"]), y=hist["count"], width=(hist["bin_hi"] - hist["bin_lo"])))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), title="Activation histogram (residues)", xaxis_title="activation",
                      yaxis_title="residues")
    return fig


def group_bar(df: pd.DataFrame, grouping: str):
    import plotly.express as px

    fig = px.bar(df, x="grp", y="frac", hover_data=["n_fire", "n_proteins", "mean_act", "log_odds", "q"],
                 labels={"grp": grouping, "frac": "fraction of proteins where it fires"})
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), title=f"Usage by {grouping}")
    return fig


def heatmap(m: pd.DataFrame, title: str, xlab: str = "feature", ylab: str = ""):
    import plotly.express as px

    fig = px.imshow(m.values, x=[str(c) for c in m.columns], y=[str(i) for i in m.index], aspect="auto",
                    color_continuous_scale="Reds", labels=dict(x=xlab, y=ylab, color="value"))
    fig.update_layout(height=max(250, 22 * len(m.index) + 120), margin=dict(l=10, r=10, t=40, b=10), title=title)
    return fig
