"""Rendering for the app: per-residue tracks and structure viewers (HTML) and plotly figures.
Everything here is a pure function of data the pages pass in; :mod:`esmsae.explore` holds the
queries. Text from files and users is escaped before it reaches HTML or a script."""
from __future__ import annotations

import html
import io
import json
import re

import numpy as np
import pandas as pd


def format_number(v) -> str:
    """A metric value a person can read at a glance: thousands separators for counts, 3
    significant digits for measurements, scientific notation for the very small."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    v = float(v)
    if not np.isfinite(v):
        return str(v)
    if v != 0 and abs(v) < 1e-3:  # "3.1e-5": fits a metric tile, where "3.10e-05" was cut to "3.10..."
        m, e = f"{v:.1e}".split("e")
        return f"{m}e{int(e)}"
    if abs(v) >= 1e4:
        return f"{v:,.0f}"
    return f"{v:.3g}"


PQ_COLUMNS = {"p": "%.2e", "q": "%.2e", "log_odds": "%.2f", "frac": "%.3f", "mean_act": "%.3g"}


def script_json(obj) -> str:
    """JSON safe to embed inside an HTML ``<script>``: ``<``, ``>``, ``&`` and the JS line
    separators are escaped, so a file containing ``</script>`` cannot close the script."""
    return (json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


class StructureError(ValueError):
    pass


def _resnum(label) -> int:
    m = re.match(r"-?\d+", str(label))
    return int(m.group(0)) if m else 0


def chain_breaks(resi: list) -> list[int]:
    """Residue numbers after which the chain has a gap (missing residues): the sequence read
    from the atoms joins the pieces, so the app says where they are."""
    nums = [_resnum(r) for r in resi]
    return [a for a, b in zip(nums, nums[1:]) if b - a > 1]


def parse_structure(text: str, fmt: str) -> dict[str, tuple[str, list[int]]]:
    """Chains of a PDB / mmCIF text -> {chain: (sequence, residue numbers)} (amino acids only).

    Residue labels are the residue number plus its insertion code ("52", "52A", "52B"), which is
    how the 3D viewer's colouring tells inserted residues apart. Gaps (missing residues) are
    reported by :func:`chain_breaks`."""
    import warnings

    from Bio.PDB import MMCIFParser, PDBParser
    from Bio.PDB.Polypeptide import is_aa
    from Bio.SeqUtils import seq1

    if not text.strip():
        raise StructureError("the structure file is empty")
    parser = MMCIFParser(QUIET=True) if fmt in ("cif", "mmcif") else PDBParser(QUIET=True)
    def read(t: str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parser.get_structure("x", io.StringIO(t))

    try:
        s = read(text)
    except Exception as e:  # Bio raises a variety of errors on broken files
        # a file cut in the middle of a record: read what is whole (truncation_warnings says so)
        whole = text[: text.rstrip("\n").rfind("\n") + 1]
        try:
            s = read(whole) if whole.strip() else None
        except Exception:
            s = None
        if s is None:
            raise StructureError(f"could not read this {fmt.upper()} file: {e}") from e
    models = list(s)
    if not models:
        raise StructureError(f"no models with atoms in this {fmt.upper()} file")
    chains = {}
    for ch in models[0]:
        # standard residues, plus modified amino acids written as HETATM (e.g. TPO), as in the atom sequence
        res = [
            r
            for r in ch
            if (r.id[0] == " " and is_aa(r, standard=False)) or (r.id[0].startswith("H_") and "CA" in r and "N" in r)
        ]
        if res:
            seq = "".join(seq1(r.get_resname(), undef_code="X") for r in res)
            chains[ch.id] = (seq, [f"{r.id[1]}{r.id[2].strip()}" for r in res])
    if not chains:
        raise StructureError(f"no protein chains found in this {fmt.upper()} file")
    return chains


def align_positions(a: str, b: str) -> dict[int, int]:
    """Positions of sequence ``a`` mapped onto ``b`` through their matching blocks (difflib; identical
    runs of at least 3 residues), e.g. an indexed sequence onto a chain whose atoms miss some residues."""
    from difflib import SequenceMatcher

    out: dict[int, int] = {}
    for blk in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        if blk.size >= 3:
            out.update({blk.a + i: blk.b + i for i in range(blk.size)})
    return out


def truncation_warnings(text: str, fmt: str, chains: dict[str, tuple[str, list]]) -> list[str]:
    """Signs that a structure file was cut short (a partial download, the first kilobytes of a file):
    it ends in the middle of a record, or its chains hold far fewer residues with atoms than the file
    declares (PDB SEQRES per chain; mmCIF _entity_poly_seq per entity). Empty when it looks whole."""
    out = []
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else ""
    n_res = {c: len(s) for c, (s, _) in chains.items()}
    if fmt in ("cif", "mmcif"):
        fields = [ln.strip() for ln in lines if ln.startswith("_atom_site.")]
        if fields and last.startswith(("ATOM", "HETATM")) and len(last.split()) < len(fields):
            out.append(f"the file ends in the middle of an atom record ({len(last.split())} of {len(fields)} fields)")
        elif fields and last != "#" and not text.endswith("\n"):
            out.append("the file ends in the middle of a line")
        declared: dict[str, int] = {}
        in_loop = False
        cols: list[str] = []
        for ln in lines:
            t = ln.strip()
            if t.startswith("_entity_poly_seq."):
                in_loop, cols = True, cols + [t.split(".", 1)[1].split()[0]]
            elif in_loop and (t.startswith(("_", "loop_", "#"))):
                if declared:
                    break
                in_loop = t.startswith("_entity_poly_seq.")
            elif in_loop and cols and "entity_id" in cols:
                parts = t.split()
                if len(parts) >= len(cols):
                    e = parts[cols.index("entity_id")]
                    declared[e] = declared.get(e, 0) + 1
        if declared and n_res and max(n_res.values()) < 0.5 * min(declared.values()):
            out.append(
                f"its polymer entities declare {min(declared.values())}-{max(declared.values())} residues, but the"
                f" longest chain has atoms for {max(n_res.values())}"
            )
    else:
        if lines and not last.startswith(("END", "MASTER", "CONECT", "ENDMDL", "TER")):
            short = last.startswith(("ATOM", "HETATM")) and len(last) < 54
            out.append("the file ends in the middle of an atom record" if short else "the file has no END record")
        seqres: dict[str, int] = {}
        for ln in lines:
            if ln.startswith("SEQRES") and len(ln) > 17:
                try:
                    seqres[ln[11]] = int(ln[13:17])
                except ValueError:
                    pass
        for c, n in n_res.items():
            if c in seqres and n < 0.5 * seqres[c]:
                out.append(f"chain {c}: atoms for {n} of the {seqres[c]} residues its SEQRES declares")
    return out


def structure_html(text: str, fmt: str, chain: str, resi: list[int], values: np.ndarray, vmax: float, height: int = 420,
                   js_src: str = "/app/static/3Dmol-min.js") -> str:
    """A 3Dmol.js viewer (served locally, no CDN) with the chain's cartoon coloured by activation."""
    vmax = vmax if vmax > 0 else 1.0
    colors = {str(r): _hex(float(v) / vmax) for r, v in zip(resi, values)}
    payload = script_json(text)
    return f"""<!doctype html><html><head><meta charset="utf-8"><script src="{html.escape(js_src)}"></script>
<style>html,body{{margin:0;height:100%;background:#fff}}#v{{width:100%;height:{height}px;position:relative}}
#err{{font:14px sans-serif;color:#a00;padding:8px}}</style></head><body><div id="v"></div><div id="err"></div><script>
(function(){{
  var missing = {script_json("3Dmol.js could not be loaded from " + js_src)};
  if (typeof $3Dmol === "undefined") {{ document.getElementById("err").textContent = missing; return; }}
  var v = $3Dmol.createViewer(document.getElementById("v"), {{backgroundColor: "white"}});
  v.addModel({payload}, "{'cif' if fmt in ('cif', 'mmcif') else 'pdb'}");
  var colors = {script_json(colors)};
  v.setStyle({{}}, {{}});  // other chains hidden: the view is about this chain
  var colorOf = function(a) {{ return colors[String(a.resi) + (a.icode ? String(a.icode).trim() : "")] || "#f2f2f2"; }};
  v.setStyle({{chain: {script_json(chain)}, hetflag: false}}, {{cartoon: {{colorfunc: colorOf}}}});
  v.zoomTo({{chain: {script_json(chain)}}}); v.render();
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
        cells.append(f'<span title="{html.escape(aa)}{i + 1}: {v:.3f}" style="{style}">{html.escape(aa)}</span>')
    head = f'<div class="esmsae-track-title">{html.escape(title)}</div>' if title else ""
    return (
        f'{head}<div class="esmsae-track"'
        ' style="font-family:monospace;font-size:12px;line-height:1.5;word-break:break-all;'
        f'letter-spacing:0.5px">{"".join(cells)}</div>'
    )


# categorical palette (Okabe-Ito, readable by colour-blind viewers), then greys
_LANE_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
                 "#999999", "#666666")


def label_lanes_html(length: int, positions, values, vmax: float, spans: pd.DataFrame, first: str = "") -> str:
    """Where the feature fires next to the protein's labels, on one position axis (as InterPro draws
    domains under a sequence): an activation lane, then one lane per label source with its spans
    coloured by concept (hover: concept and residue range, 1-based). ``spans``: rows of
    ``FeatureIndex.label_spans`` for this protein; ``first``: a concept whose source goes first (the
    feature's best concept). Returns "" when the protein has no labels."""
    if spans is None or spans.empty or length <= 0:
        return ""
    vmax = vmax if vmax > 0 else 1.0
    w = max(100.0 / length, 0.25)

    def bar(a: int, b: int, colour: str, tip: str) -> str:
        return (f'<span title="{html.escape(tip)}" style="position:absolute;left:{100.0 * a / length:.3f}%;'
                f'width:{max(100.0 * (b - a) / length, w):.3f}%;top:0;bottom:0;background:{colour}"></span>')

    def lane(name: str, body: str, bold: bool = False) -> str:
        weight = "font-weight:600;" if bold else ""
        return (f'<div style="display:flex;align-items:center;gap:6px;margin:1px 0"><div style="width:150px;'
                f'font-size:11px;{weight}white-space:nowrap;overflow:hidden;text-overflow:ellipsis" '
                f'title="{html.escape(name)}">{html.escape(name)}</div><div style="position:relative;flex:1;'
                f'height:10px;background:#f4f4f4">{body}</div></div>')

    acts = "".join(bar(int(p), int(p) + 1, _hex(float(v) / vmax), f"{p + 1}: {float(v):.3f}")
                   for p, v in zip(positions, values) if float(v) > 0)
    out = [lane("activation", acts)]
    first_source = spans.loc[spans["concept"] == first, "source"].iloc[0] if (spans["concept"] == first).any() else ""
    sources = sorted(spans["source"].unique(), key=lambda s: (s != first_source, s))
    legend, n_concepts = [], 0  # one colour per concept across all lanes: the legend is shared
    for src in sources:
        rows = spans[spans["source"] == src]
        body, stops = [], []
        dense = sum(len(x) for x in rows["starts"]) > 60  # per-residue partitions (conservation, SS): one gradient
        for _, r in rows.iterrows():
            colour = _LANE_COLOURS[n_concepts % len(_LANE_COLOURS)]
            n_concepts += 1
            short = r["concept"].split(": ", 1)[-1]
            for a, b in zip(r["starts"], r["ends"]):
                if dense:
                    stops.append((int(a), int(b), colour))
                else:
                    body.append(bar(int(a), int(b), colour, f"{short}: {int(a) + 1}-{int(b)}"))
            legend.append(f'<span style="white-space:nowrap;margin-right:10px"><span style="display:inline-block;'
                          f'width:9px;height:9px;background:{colour};margin-right:3px"></span>'
                          + ("<b>" if r["concept"] == first else "") + html.escape(r["concept"])
                          + ("</b>" if r["concept"] == first else "") + "</span>")
        if stops:  # a gradient with hard stops: a few bytes a span instead of an element each
            g, at = [], 0
            for a, b, colour in sorted(stops):
                if a > at:
                    g.append(f"#f4f4f4 {100.0 * at / length:.2f}% {100.0 * a / length:.2f}%")
                g.append(f"{colour} {100.0 * a / length:.2f}% {100.0 * b / length:.2f}%")
                at = b
            body.append(f'<span title="{html.escape(src)}: {len(stops)} labelled segments" style="position:absolute;'
                        f'inset:0;background:linear-gradient(to right,{",".join(g)})"></span>')
        out.append(lane(src, "".join(body), bold=src == first_source))
    return ('<div class="esmsae-lanes" style="margin:2px 0 10px 0">' + "".join(out)
            + f'<div style="font-size:11px;color:#444;margin-top:2px">{"".join(legend)}</div></div>')


def freq_histogram(features: pd.DataFrame):
    import plotly.express as px

    df = features[features["freq_residue"] > 0].assign(log10_freq=lambda d: np.log10(d["freq_residue"]))
    fig = px.histogram(df, x="log10_freq", nbins=50, labels={"log10_freq": "log10 firing frequency (per residue)"})
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), title="Feature frequency")
    return fig


def steer_figure(delta_L20: np.ndarray, sequence: str, feature: int):
    """Per-position change of the predicted residue distribution under a steering edit:
    steered minus original log-probability, residues x the 20 amino acids."""
    from esmsae.core.fasta import STANDARD

    m = pd.DataFrame(
        np.asarray(delta_L20).T, index=list(STANDARD), columns=[f"{a}{i + 1}" for i, a in enumerate(sequence)]
    )
    return heatmap(
        m, f"Δ log-probability, steering feature {feature}", xlab="residue", ylab="amino acid", diverging=True
    )


def lm_curve_figure(curve: pd.DataFrame):
    """The LM's held-out <mask> perplexity over training tokens, with its baselines on the same
    positions (residue frequencies; the two neighbouring residues)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    x = curve["tokens"] / 1e6
    fig.add_scatter(x=x, y=curve["masked_ppl"], mode="lines+markers", name="protein LM (<mask> positions)")
    fig.add_scatter(
        x=x, y=curve["masked_unigram_ppl"], mode="lines", name="unigram (residue frequencies)", line=dict(dash="dash")
    )
    if "masked_neighbour_ppl" in curve:
        fig.add_scatter(
            x=x, y=curve["masked_neighbour_ppl"], mode="lines", name="two neighbouring residues", line=dict(dash="dot")
        )
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), title="Held-out perplexity at <mask> positions",
                      xaxis_title="training tokens of this run (M)", yaxis_title="perplexity")
    return fig


def feature_map(points: pd.DataFrame, color: str = "concept"):
    """UMAP of decoder directions, one WebGL point per feature (``FeatureIndex.feature_points``), coloured by
    the concept each feature *matches* (index/verdicts.py; grey where it matches none), frequency, cluster
    or state."""
    import plotly.express as px

    df = points.copy()
    df["log10_freq"] = np.log10(df["freq_residue"].clip(lower=1e-7))
    df["concept"] = np.where(df["concept"].fillna("") != "", df["concept"], "(no match)")
    df["state"] = np.where(df["dead"], "dead", "live")
    df["cluster"] = df["cluster"].astype(str)
    c = {"frequency": "log10_freq", "cluster": "cluster", "dead": "state"}.get(color, "concept")
    fig = px.scatter(
        df,
        x="umap_x",
        y="umap_y",
        color=c,
        hover_data=["feature", "label", "verdict", "freq_residue", "cluster"],
        render_mode="webgl",
        custom_data=["feature"],
        labels={"log10_freq": "log10 frequency", "concept": "matched concept", "state": ""},
        color_discrete_sequence=px.colors.qualitative.Dark24,
        color_discrete_map={"(no match)": "lightgrey"},
    )
    fig.update_traces(marker=dict(size=4))
    # many categories (40 clusters, dozens of concepts): a compact legend beside the map, or none for clusters
    fig.update_layout(height=520, margin=dict(l=10, r=10, t=30, b=10), title="Feature map (UMAP of decoder directions)",
                      legend=dict(font=dict(size=9), itemsizing="constant", tracegroupgap=0), showlegend=c != "cluster")
    return fig


def activation_hist(hist: pd.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Bar(
            x=np.sqrt(hist["bin_lo"].clip(lower=1e-4) * hist["bin_hi"]),
            y=hist["count"],
            width=(hist["bin_hi"] - hist["bin_lo"]),
        )
    )
    fig.update_layout(
        height=260,
        margin=dict(l=10, r=10, t=30, b=10),
        title="Activation histogram (residues)",
        xaxis_title="activation",
        yaxis_title="residues",
    )
    return fig


def group_bar(df: pd.DataFrame, grouping: str):
    import plotly.express as px

    fig = px.bar(df, x="grp", y="frac", hover_data=["n_fire", "n_proteins", "mean_act", "log_odds", "q"],
                 labels={"grp": grouping, "frac": "fraction of proteins where it fires"})
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), title=f"Usage by {grouping}")
    return fig


def heatmap(m: pd.DataFrame, title: str, xlab: str = "feature", ylab: str = "", diverging: bool = False):
    import plotly.express as px

    lim = float(np.abs(m.values).max()) if diverging and m.size else None
    fig = px.imshow(
        m.values,
        x=[str(c) for c in m.columns],
        y=[str(i) for i in m.index],
        aspect="auto",
        color_continuous_scale="RdBu_r" if diverging else "Reds",
        labels=dict(x=xlab, y=ylab, color="value"),
        **({"zmin": -lim, "zmax": lim} if lim else {}),
    )
    # feature ids are names, not numbers: one column each, in the order given (cluster order)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=[str(c) for c in m.columns])
    fig.update_layout(height=max(250, 22 * len(m.index) + 120), margin=dict(l=10, r=10, t=40, b=10), title=title)
    return fig


def firing_windows(examples: pd.DataFrame, flank: int = 7, frac: float = 0.5, cap: int = 400) -> list[str]:
    """The residues around every firing position of the examples (value >= ``frac`` x that example's
    max; ``flank`` either side), padded with '-' at the protein's ends: the input of
    :func:`sequence_logo`. At most ``cap`` windows, strongest examples first."""
    out = []
    for _, r in examples.iterrows():
        s, vals = r["sequence"], np.asarray(r["values"], float)
        pos = np.asarray(r["positions"], int)[vals >= frac * float(r["max_act"])]
        for p in pos:
            left = s[max(0, p - flank):p].rjust(flank, "-")
            out.append(left + s[p] + s[p + 1:p + 1 + flank].ljust(flank, "-"))
            if len(out) >= cap:
                return out
    return out


def sequence_logo(windows: list[str], flank: int = 7):
    """A sequence logo (information content, bits) of the windows around firing positions, drawn by
    logomaker (Tareen & Kinney 2020) in its chemistry colours; position 0 is the firing residue."""
    import logomaker
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = logomaker.alignment_to_matrix(windows, to_type="counts", characters_to_ignore="-.X")
    info = logomaker.transform_matrix(counts, from_type="counts", to_type="information")
    info.index = info.index - flank
    fig, ax = plt.subplots(figsize=(8, 2.2))
    logomaker.Logo(info, ax=ax, color_scheme="chemistry")
    ax.set_xlabel("position relative to the firing residue")
    ax.set_ylabel("bits")
    ax.set_title(f"{len(windows)} firing residues of the top examples", fontsize=9)
    fig.tight_layout()
    return fig
