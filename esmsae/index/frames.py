"""The index tables as DataFrames, computed from the accumulated stream once the pass is over: concept
F1 on the two halves, group enrichment with the length and composition controls, the features table
with descriptions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from esmsae.config import IndexConfig
from esmsae.core.dist import World
from esmsae.index.accumulate import Layout, Stream
from esmsae.index.bootstrap import N_BASELINES, candidates, lower_bounds, protein_counts
from esmsae.index.composition import composition_counts, composition_enrichment
from esmsae.index.concept_f1 import (
    CAUSAL_LAGS,
    DETECTOR_PURITY,
    ConceptLayout,
    Selection,
    aa_purity,
    concept_counts,
    concept_layout,
    eligible,
    point_matches,
    select,
)
from esmsae.index.concept_f1 import (
    report as concept_report,
)
from esmsae.index.describe import describe, search_text
from esmsae.index.group_stats import top_group_q, top_groups, usage_frame
from esmsae.index.protein_table import ProteinTable
from esmsae.index.proteins import Item
from esmsae.index.streaming import CSRWriter
from esmsae.index.tables import feature_map, hist_quantiles
from esmsae.index.window_model import WindowModels


def _layout(layout: Layout, windows: "WindowModels | None", causal: bool = False):
    has = None if windows is None else [
        windows.has_model(c, layout.source_names[s]) for c, s in zip(layout.concept_names, layout.concept_source)
    ]
    return concept_layout(layout.concept_names, layout.concept_source, has, CAUSAL_LAGS if causal else (0,))


def _concept_halves(csr: CSRWriter, items: dict[int, Item], layout: Layout, st: "Stream", w: World = World(),
                    windows: "WindowModels | None" = None, causal: bool = False):
    """Concept counts (valid and test halves) of this rank's labelled proteins, thresholded at the
    global feature maxima, then summed over ranks (integer counts: exact)."""
    lay = _layout(layout, windows, causal)
    halves = concept_counts(csr, items, st.max_F, layout.concept_ids, layout.source_ids, lay, windows)
    if w.distributed:
        from dataclasses import fields

        from esmsae.core.dist import all_reduce_

        for h in halves:
            for fld in fields(h):
                a = getattr(h, fld.name)
                assert a.flags.c_contiguous  # reduced in place through a shared torch view
                all_reduce_(torch.from_numpy(a), "sum")
    return halves


@dataclass
class Choices:
    """What the valid half decides, made once and used by the bootstrap pass and the tables."""

    lay: ConceptLayout
    ok: np.ndarray  # [C] eligible
    sel: Selection
    aa: dict  # aa_purity(...) of every feature


def _concept_choices(halves, layout: Layout, st: "Stream", windows: "WindowModels | None" = None,
                     causal: bool = False) -> Choices:
    lay = _layout(layout, windows, causal)
    ok = eligible(halves, lay)
    return Choices(lay, ok, select(halves[0], lay, ok), aa_purity(st.aa_FA, st.n_res_A))


def _concept_intervals(csr: CSRWriter, items: dict[int, Item], halves, layout: Layout, st: "Stream",
                       windows: "WindowModels | None", ch: Choices, w: World = World()):
    """Bootstrap intervals (``bootstrap``) of the point-estimate matches, from a second pass over the
    test proteins; per-protein rows of every rank are gathered on rank 0."""
    lay, ok, sel, aa = ch.lay, ch.ok, ch.sel, ch.aa
    cands = candidates(point_matches(halves, lay, sel, ok, aa["aa_purity"]), sel.f1_valid_CF)
    per = protein_counts(csr, items, st.max_F, layout.concept_ids, layout.source_ids, lay, sel, cands, windows)
    if w.distributed:
        import torch.distributed as tdist

        got: list = [None] * w.size
        tdist.all_gather_object(got, per)
        per = {c: tuple(np.concatenate([g[c][k] for g in got if c in g]) for k in range(3))
               for c in {c for g in got for c in g}}
    C, F = halves[0].tp.shape[:2]
    return lower_bounds(per, cands, lay, N_BASELINES, C, F)


def _concept_frames(halves, layout: Layout, st: "Stream", windows: "WindowModels | None" = None,
                    causal: bool = False, ci=None, ch: Choices | None = None):
    """The concepts table, concept F1 per (feature, concept) chosen on valid and reported on test
    proteins, each feature's best concept and its amino-acid control (``concept_f1``)."""
    ch = ch or _concept_choices(halves, layout, st, windows, causal)
    lay, ok, sel, aa = ch.lay, ch.ok, ch.sel, ch.aa
    f1_df, per_c, best = concept_report(halves, lay, sel, ok, aa["aa_purity"], ci)
    v, t = halves
    concepts_df = pd.DataFrame(
        {
            "concept": layout.concept_names,
            "source": [layout.source_names[s] for s in layout.concept_source],
            "n_proteins": v.n_prot + t.n_prot,
            "n_residues": v.n_res + t.n_res,
            "n_domains": v.n_dom + t.n_dom,
            "n_valid_proteins": v.n_prot,
            "n_test_proteins": t.n_prot,
        }
    )
    # always the full column set: an index built without --concepts has an empty table that pages still query,
    # with typed columns (an empty object column would reach DuckDB as NULL / DOUBLE and break text comparisons)
    concepts_df = pd.concat([concepts_df, per_c], axis=1)
    if concepts_df.empty:
        text = {"concept", "source", "recall_over", "aa_rule", "local_rule", "best_baseline"} | {
            c for c in concepts_df if c.endswith("_rule")
        }
        concepts_df = concepts_df.astype(
            {
                c: "string" if c in text else bool if c in ("catch_all", "eligible") else "float64"
                for c in concepts_df.columns
            }
        )
    return concepts_df, f1_df, best, aa


USAGE_COLUMNS = [
    "grouping",
    "grp",
    "feature",
    "n_proteins",
    "n_fire",
    "frac",
    "mean_act",
    "log_odds",
    "p",
    "q",
    "tested",
    "log_odds_composition",
    "q_composition",
    "composition_driven",
]


def _composition_counts(st: Stream, layout: Layout, w: World = World()) -> dict | None:
    """Length x composition strata counts of every grouping (the composition control), summed over
    ranks; the feature's top amino acid is taken from the global amino-acid counts."""
    if st.firing is None:
        return None
    top_aa_F = st.aa_FA.argmax(1)
    freq_A = st.n_res_A / max(int(st.n_res_A.sum()), 1)
    n_groups = [len(layout.group_names[g]) for g in layout.groupings]
    counts = composition_counts(st.firing, top_aa_F, freq_A, n_groups, len(layout.length_edges) + 1)
    if w.distributed:
        from esmsae.core.dist import all_reduce_

        for fire, prot in counts:
            all_reduce_(torch.from_numpy(fire), "sum")
            all_reduce_(torch.from_numpy(prot), "sum")
    return {"top_aa_F": top_aa_F, "counts": dict(zip(layout.groupings, counts))}


def _group_frames(cfg: IndexConfig, table: ProteinTable, layout: Layout, st: Stream, comp: dict | None = None):
    """The groups table, the group x feature usage table (length-stratified test by default) and
    each feature's top group (only where enriched at q < 0.05, see ``group_stats``)."""
    F = len(st.fire_prot_F)
    group_rows, usage_frames = [], []
    top_group = np.array([""] * F, dtype=object)
    top_q = np.full(F, np.nan)
    members_GB = table.member_counts(layout.group_ids, layout.length_edges)
    for g in layout.groupings:
        n_prot_GB = members_GB[g]
        frame, enr = usage_frame(
            layout.group_names[g], st.n_fire_G[g], st.sum_max_G[g], n_prot_GB, cfg.group_test, cfg.min_group_size
        )
        frame = _with_composition(frame, enr, comp, g, cfg.min_group_size)
        usage_frames.append(frame.assign(grouping=g)[USAGE_COLUMNS])
        group_rows += [
            (g, name, int(n_prot_GB[gi].sum()), bool(enr["tested"][gi]))
            for gi, name in enumerate(layout.group_names[g])
        ]
        if g == "kingdom" or (g == layout.groupings[0] and "kingdom" not in layout.groupings):
            top_group = top_groups(layout.group_names[g], enr, st.fire_prot_F)
            top_q = top_group_q(layout.group_names[g], enr, top_group)
    usage = pd.concat(usage_frames) if usage_frames else pd.DataFrame(columns=USAGE_COLUMNS)
    return pd.DataFrame(group_rows, columns=["grouping", "grp", "n_proteins", "tested"]), usage, (top_group, top_q)


def _with_composition(frame: pd.DataFrame, enr: dict, comp: dict | None, g: str, min_group_size: int) -> pd.DataFrame:
    """The composition-stratified test beside the length-only one. An enrichment (q < 0.05, log odds > 0)
    is *composition-driven* when stratifying by composition takes away more than half of its effect
    (log odds falling below half the length-only log odds): a lost effect, not a p-value crossing 0.05,
    which a smaller stratum count alone can cause (Gelman & Stern 2006: the difference between
    significant and not significant is not itself significant)."""
    if comp is None:
        return frame.assign(log_odds_composition=np.nan, q_composition=np.nan, composition_driven=False)
    fire, prot = comp["counts"][g]
    ce = composition_enrichment(fire, prot, comp["top_aa_F"], min_group_size)
    sig = (enr["q"] < 0.05) & (enr["log_odds"] > 0)
    lost = ~(np.nan_to_num(ce["log_odds"], nan=0.0) > 0.5 * enr["log_odds"])
    return frame.assign(
        log_odds_composition=ce["log_odds"].ravel(),
        q_composition=ce["q"].ravel(),
        composition_driven=(sig & lost).ravel(),
    )


def _feature_frame(
    cfg: IndexConfig, sae, st: Stream, n_done: int, best: dict, aa: dict, top_group: np.ndarray
) -> pd.DataFrame:
    F = sae.cfg.n_latents
    freq_res = st.fire_res_F / max(st.n_res, 1)
    qs = hist_quantiles(st.hist_FH, (0.5, 0.9, 0.99))
    umap_xy, cluster = feature_map(sae.W_dec.detach().float().cpu().numpy(), cfg.seed, cfg.umap)
    return pd.DataFrame(
        {
            "feature": np.arange(F),
            "freq_residue": freq_res,
            "freq_protein": st.fire_prot_F / max(n_done, 1),
            "n_proteins": st.fire_prot_F,
            "n_residues": st.fire_res_F,
            "max_act": st.max_F,
            "mean_act": np.where(st.fire_res_F > 0, st.sum_F / np.maximum(st.fire_res_F, 1), 0.0),
            "q50": qs[:, 0],
            "q90": qs[:, 1],
            "q99": qs[:, 2],
            "dead": st.fire_res_F == 0,
            "dense": freq_res > cfg.dense_threshold,
            "idf": np.log(max(n_done, 1) / np.maximum(st.fire_prot_F, 1)),
            # best concept: chosen on valid proteins; F1, precision, recall on held-out test proteins
            "best_concept": best["concept"],
            "best_f1": best["f1"],
            "best_f1_valid": best["f1_valid"],
            "best_threshold": best["threshold"],
            "best_lag": best["lag"],
            "best_precision": best["precision"],
            "best_recall": best["recall"],
            "best_trivial_f1": best["trivial_f1"],
            "best_aa_rule_f1": best["aa_rule_f1"],
            "best_local_rule_f1": best["local_rule_f1"],
            "matches_concept": best["match"],
            # the amino-acid control: top residue type, share of firing on it, F1 for "is that residue"
            "aa_top": aa["aa_top"],
            "aa_purity": aa["aa_purity"],
            "aa_f1": aa["aa_f1"],
            "residue_detector": aa["aa_purity"] >= DETECTOR_PURITY,
            # automatic label: a concept only where the feature beats both baselines on test proteins
            "label": np.where(
                best["match"],
                best["concept"],
                np.where(aa["aa_purity"] >= DETECTOR_PURITY, np.char.add("Amino acid: ", aa["aa_top"].astype(str)), ""),
            ),
            "top_group": top_group,
            "cluster": cluster,
            "umap_x": umap_xy[:, 0],
            "umap_y": umap_xy[:, 1],
            # reference display statistics shipped with the SAE (NaN when it has none)
            "ref_max": _ref_stat(sae, 0, F),
            "ref_idf": _ref_stat(sae, 1, F),
        }
    )


def _with_descriptions(features: pd.DataFrame, table: ProteinTable, st: Stream, top_q: np.ndarray) -> pd.DataFrame:
    """Grounded descriptions and the search text (``describe``), from this index's own evidence."""
    ranked = {f: [it[0] for _, it in st.top.ranked(f)[:10]] for f in range(len(st.top.items))}
    info = table.columns([p for v in ranked.values() for p in v], ("id", "description"))
    # plain dicts: 10 x F lookups through DataFrame.at took 3.4 s at 10,240 features
    ids, names = info["id"].to_dict(), info["description"].to_dict()
    top_ids = {f: [ids[p] for p in v] for f, v in ranked.items()}
    top_names = {f: [names[p] for p in v] for f, v in ranked.items()}
    features = features.assign(n_nterm=st.ends_F2[:, 0], n_cterm=st.ends_F2[:, 1], top_group_q=top_q)
    d = describe(features, top_names, top_q)
    return features.assign(
        description=d["description"].to_numpy(),
        evidence=d["evidence"].to_numpy(),
        search_text=search_text(
            d, features, {f: ids + [n for n in top_names[f] if n] for f, ids in top_ids.items()}
        ).to_numpy(),
    )


def _ref_stat(sae, which: int, F: int) -> np.ndarray:
    t = sae.display_stats()[which]
    return np.full(F, np.nan) if t is None else t.detach().float().cpu().numpy().astype(np.float64)
