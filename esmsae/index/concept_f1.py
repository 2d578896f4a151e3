"""Concept F1 of features (InterPLM's protocol): per feature x concept x threshold, precision
over residues, recall over annotated domains and residues, from the CSR codes of labelled
proteins once each feature's max is known."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .streaming import LATENT_BITS, MAX_LATENTS

if TYPE_CHECKING:
    from .proteins import Item
    from .streaming import CSRWriter

THRESHOLDS = (0.0, 0.15, 0.5, 0.6, 0.8)  # fractions of each feature's max (InterPLM)
MIN_DOMAINS = 10  # a concept needs this many annotated domains to be a feature's best concept
MAX_COVERAGE = 0.5  # ...and may cover at most this fraction of its source's residues (not "everything")


def concept_counts(csr: "CSRWriter", items: "list[Item]", fmax_F: np.ndarray, concept_ids: dict[str, int],
                    source_ids: dict[str, int]) -> dict[str, np.ndarray]:
    """Per feature x concept x threshold: true-positive residues and hit domains; per
    feature x source x threshold: active residues (the precision denominator)."""
    F, C, S, T = len(fmax_F), len(concept_ids), len(source_ids), len(THRESHOLDS)
    tp = np.zeros((C, F, T), np.int64)
    dom = np.zeros((C, F, T), np.int64)
    act = np.zeros((S, F, T), np.int64)
    thr = np.asarray(THRESHOLDS, np.float32)
    safe_max = np.where(fmax_F > 0, fmax_F, 1.0).astype(np.float32)
    for pidx, key, val in csr.read():
        res, feat = key >> LATENT_BITS, key & (MAX_LATENTS - 1)
        # level = how many thresholds the normalised activation exceeds (t=0 means "fires")
        level = (val[:, None] / safe_max[feat][:, None] > thr[None, :]).sum(1)
        it = items[pidx]
        L = len(it.sequence)
        for s_name in {lab.source for lab in it.labels}:
            s = source_ids[s_name]
            act[s] += level_counts(feat, level, F, T)
        for lab in it.labels:
            for cname, spans in lab.spans.items():
                c = concept_ids[cname]
                dom_id = np.full(L, -1, np.int64)
                for d, (x, y) in enumerate(spans):
                    dom_id[x:y] = d
                inside = dom_id[res] >= 0
                tp[c] += level_counts(feat[inside], level[inside], F, T)
                # a domain is hit at threshold t when any of its residues is active at t
                if inside.any():
                    k = dom_id[res[inside]] * F + feat[inside]
                    lv = level[inside]
                    o = np.lexsort((-lv, k))
                    first = np.r_[True, k[o][1:] != k[o][:-1]]
                    kk, ll = k[o][first], lv[o][first]
                    dom[c] += level_counts(kk % F, ll, F, T)
    return {"tp": tp, "dom": dom, "act": act}


def level_counts(feat: np.ndarray, level: np.ndarray, F: int, T: int) -> np.ndarray:
    """Counts per feature of entries whose level exceeds each threshold index -> [F, T]."""
    h = np.bincount(feat * (T + 1) + level, minlength=F * (T + 1)).reshape(F, T + 1)
    # entries at level l are active for thresholds 0..l-1: reverse cumulative sum
    return np.cumsum(h[:, ::-1], axis=1)[:, ::-1][:, 1:]


def concept_table(conc, concept_names, concept_source, n_res_C, n_dom_C, coverage_C):
    tp, dom, act = conc["tp"], conc["dom"], conc["act"]
    C, F, T = tp.shape
    rows = []
    best = {"concept": np.array([""] * F, dtype=object), "f1": np.zeros(F), "threshold": np.zeros(F),
            "precision": np.zeros(F), "recall": np.zeros(F)}
    for c in range(C):
        a = act[concept_source[c]]  # [F, T]
        eligible = n_dom_C[c] >= MIN_DOMAINS and coverage_C[c] <= MAX_COVERAGE
        prec = tp[c] / np.maximum(a, 1)
        rec_dom = dom[c] / max(n_dom_C[c], 1)
        rec_res = tp[c] / max(n_res_C[c], 1)
        f1 = np.where(prec + rec_dom > 0, 2 * prec * rec_dom / np.maximum(prec + rec_dom, 1e-12), 0.0)
        ff, tt = np.nonzero((tp[c] > 0) & (f1 > 0.01))
        if len(ff):
            rows.append(pd.DataFrame({"feature": ff, "concept": concept_names[c], "threshold": np.asarray(THRESHOLDS)[tt],
                                      "tp_residues": tp[c][ff, tt], "active_residues": a[ff, tt], "hit_domains": dom[c][ff, tt],
                                      "precision": prec[ff, tt], "recall_domain": rec_dom[ff, tt], "recall_residue": rec_res[ff, tt],
                                      "f1": f1[ff, tt]}))
        fbest = f1.max(1)
        tbest = f1.argmax(1)
        better = (fbest > best["f1"]) & eligible
        best["concept"][better] = concept_names[c]
        best["f1"][better] = fbest[better]
        best["threshold"][better] = np.asarray(THRESHOLDS)[tbest[better]]
        best["precision"][better] = prec[better, tbest[better]]
        best["recall"][better] = rec_dom[better, tbest[better]]
    cols = ["feature", "concept", "threshold", "tp_residues", "active_residues", "hit_domains", "precision", "recall_domain", "recall_residue", "f1"]
    df = pd.concat(rows) if rows else pd.DataFrame(columns=cols)
    return df, best
