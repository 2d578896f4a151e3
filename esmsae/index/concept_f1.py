"""Concept F1 of features with its controls, selected on validation proteins and reported on
held-out test proteins.

Protocol (InterPLM, Simon & Zou 2024, with the controls a reviewer asks for):

* each feature is normalised by its max over the index; thresholds 0, 0.15, 0.5, 0.6, 0.8;
* precision over residues that the concept's source labels (unknown residues excluded);
  recall over annotated domains for *domain* concepts (a domain is hit when any of its
  residues fires) and over residues for *residue* concepts (``concepts.concept_kind``);
* labelled proteins are split into valid / test halves by a hash of the sequence
  (:func:`split_of`); the threshold of each (feature, concept) and each feature's best concept
  are chosen on valid counts only (:func:`select`), the F1 shown is the test F1 (:func:`report`);
* every concept carries baselines on the same residues: the *trivial* rule (fire on every residue:
  precision = coverage, recall = 1, F1 = 2c / (1 + c)), the best *single-residue* rule ("fire on
  every L", the amino acid chosen on valid), because most features of a protein LM are amino-acid
  detectors and "fire on every L" already scores helix F1 0.57, and four families of
  *local-sequence* rules (:mod:`esmsae.index.local_rules`: a Kyte-Doolittle hydropathy window, an
  amino-acid window, the first / last w residues, and the N-terminus with hydropathy), each rule
  chosen on valid;
* a feature *matches* a concept when its F1 beats every baseline by :data:`MARGIN` on the valid
  half **and** on the test half (a claim must hold on both), and it is not a single-residue
  detector (:data:`DETECTOR_PURITY`);
* support: a concept is eligible with >= :data:`MIN_PROTEINS` proteins in each half and
  > 1,500 residues (residue concepts) or > 25 domains (domain concepts), InterPLM's minimum.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from esmsae.index.concept_counts import (  # noqa: F401  (the counting layer; re-exported for callers)
    AMINO_ACIDS,
    CAUSAL_LAGS,
    SPLITS,
    THRESHOLDS,
    W_MODELS,
    ConceptLayout,
    SplitCounts,
    aa_codes,
    concept_counts,
    concept_layout,
    level_counts,
)
from esmsae.index.local_rules import FAMILIES as RULE_FAMILIES
from esmsae.index.local_rules import RULE_NAMES, best_in_family
from esmsae.index.splits import split_of
from esmsae.index.window_model import WIN_THRESHOLDS, WINDOW_COLUMNS

__all__ = ["split_of"]  # re-exported: the valid / test hash lives in esmsae.index.splits
MIN_PROTEINS = 20  # labelled proteins of the concept in each half (5 let TM strands rest on 6 test proteins)
MIN_RESIDUES = 1500  # residue concepts: annotated residues over both halves (InterPLM: > 1,500)
MIN_DOMAINS = 25  # domain concepts: annotated domains over both halves (InterPLM: > 25)
MARGIN = 0.05  # test F1 must beat the trivial and the single-residue rule by this much
DETECTOR_PURITY = 0.9  # a feature putting >= 90% of its firing on one amino acid is a residue detector


def _f1(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)


def feature_prf(h: SplitCounts, lay: ConceptLayout, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1) [F, T] of every feature for concept c on one half."""
    prec = h.tp[c] / np.maximum(h.act[lay.source[c]], 1)
    rec = (h.dom[c] / max(h.n_dom[c], 1)) if lay.is_domain[c] else (h.tp[c] / max(h.n_res[c], 1))
    return prec, rec, _f1(prec, rec)


def aa_rule_f1(h: SplitCounts, lay: ConceptLayout, c: int) -> np.ndarray:
    """F1 [20] of the rules "fire on every residue of amino acid a" for concept c on one half."""
    prec = h.aa_tp[c] / np.maximum(h.aa_act[lay.source[c]], 1)
    rec = (h.aa_dom[c] / max(h.n_dom[c], 1)) if lay.is_domain[c] else (h.aa_tp[c] / max(h.n_res[c], 1))
    return _f1(prec, rec)


def rule_f1(h: SplitCounts, lay: ConceptLayout, c: int) -> np.ndarray:
    """F1 [R] of every local-sequence rule for concept c on one half."""
    prec = h.rule_tp[c] / np.maximum(h.rule_act[lay.source[c]], 1)
    rec = (h.rule_dom[c] / max(h.n_dom[c], 1)) if lay.is_domain[c] else (h.rule_tp[c] / max(h.n_res[c], 1))
    return _f1(prec, rec)


def window_f1(h: SplitCounts, lay: ConceptLayout, c: int, per_residue: bool = False) -> np.ndarray:
    """F1 [M, W_T] of each learned window model at each probability threshold for concept c on one half
    (``per_residue``: recall over residues even for a domain concept)."""
    prec = h.win_tp[c] / np.maximum(h.win_act[c], 1)
    if lay.is_domain[c] and not per_residue:
        rec = h.win_dom[c] / max(h.n_dom[c], 1)
    else:
        rec = h.win_tp[c] / max(h.n_res[c], 1)
    return _f1(prec, rec)


def residue_f1(h: SplitCounts, lay: ConceptLayout, c: int) -> np.ndarray:
    """Plain per-residue F1 [F, T] of every feature (recall over residues, for domain concepts too)."""
    prec = h.tp[c] / np.maximum(h.act[lay.source[c]], 1)
    return _f1(prec, h.tp[c] / max(h.n_res[c], 1))


def trivial_f1(h: SplitCounts, lay: ConceptLayout, c: int) -> float:
    """F1 of "fire on every labelled residue": precision = coverage, recall = 1."""
    cov = h.n_res[c] / max(h.src_res[lay.source[c]], 1)
    return float(2 * cov / (1 + cov)) if cov > 0 else 0.0


def eligible(halves: list[SplitCounts], lay: ConceptLayout) -> np.ndarray:
    v, t = halves
    enough = np.where(lay.is_domain, v.n_dom + t.n_dom > MIN_DOMAINS, v.n_res + t.n_res > MIN_RESIDUES)
    ok = enough & (v.n_prot >= MIN_PROTEINS) & (t.n_prot >= MIN_PROTEINS)
    # a concept no learned window model could be fitted for (no train proteins) cannot be claimed
    return ok & lay.has_window if lay.has_window is not None else ok


@dataclass
class Selection:
    """What is chosen on the valid half: per (concept, feature) the threshold and its valid F1,
    per concept the amino-acid rule, per feature the best eligible concept."""

    t_CF: np.ndarray  # [C, F] threshold index
    f1_valid_CF: np.ndarray  # [C, F]
    aa_rule_C: np.ndarray  # [C] amino-acid index
    aa_f1_valid_C: np.ndarray  # [C]
    best_c_F: np.ndarray  # [F] concept index, -1 for none
    rule_CK: np.ndarray  # [C, families] the local rule of each family chosen on valid
    baseline_valid_C: np.ndarray  # [C] the best valid F1 of any baseline (trivial, amino acid, local rules, windows)
    win_t_CM: np.ndarray | None = None  # [C, M] threshold index of each window model
    win_f1_valid_CM: np.ndarray | None = None  # [C, M]


def select(valid: SplitCounts, lay: ConceptLayout, eligible_C: np.ndarray) -> Selection:
    """Every choice, from valid counts alone (the test half is not an argument)."""
    C, F = valid.tp.shape[:2]
    t_CF, f1_CF = np.zeros((C, F), np.int64), np.zeros((C, F))
    aa_rule, aa_f1 = np.zeros(C, np.int64), np.zeros(C)
    rule_CK, base_C = np.zeros((C, len(RULE_FAMILIES)), np.int64), np.zeros(C)
    win_t, win_f1 = np.zeros((C, W_MODELS), np.int64), np.zeros((C, W_MODELS))
    for c in range(C):
        wf = window_f1(valid, lay, c)
        win_t[c], win_f1[c] = wf.argmax(1), wf.max(1)
        _, _, f1 = feature_prf(valid, lay, c)
        t_CF[c] = f1.argmax(1)
        f1_CF[c] = f1.max(1)
        a = aa_rule_f1(valid, lay, c)
        aa_rule[c], aa_f1[c] = int(a.argmax()), float(a.max())
        rf = rule_f1(valid, lay, c)
        rule_CK[c] = best_in_family(rf)
        base_C[c] = max(trivial_f1(valid, lay, c), aa_f1[c], float(rf[rule_CK[c]].max()), float(win_f1[c].max()))
    masked = np.where(eligible_C[:, None], f1_CF, -1.0)
    best = masked.argmax(0) if C else np.zeros(F, np.int64)
    best = np.where((masked.max(0) if C else np.zeros(F)) > 0, best, -1)
    return Selection(t_CF, f1_CF, aa_rule, aa_f1, best, rule_CK, base_C, win_t, win_f1)


def point_matches(halves: list[SplitCounts], lay: ConceptLayout, sel: Selection, eligible_C: np.ndarray,
                  purity_F: np.ndarray) -> np.ndarray:
    """[C, F] the point-estimate rule: valid and test F1 each ahead of every baseline by MARGIN, not a
    residue detector, concept eligible (the bootstrap then tests these candidates)."""
    valid, test = halves
    C, F = valid.tp.shape[:2]
    out = np.zeros((C, F), bool)
    for c in range(C):
        _, _, f1 = feature_prf(test, lay, c)
        f1_t = f1[np.arange(F), sel.t_CF[c]]
        base_t = max(trivial_f1(test, lay, c), float(aa_rule_f1(test, lay, c)[sel.aa_rule_C[c]]),
                     float(rule_f1(test, lay, c)[sel.rule_CK[c]].max()), float(_window_test(test, lay, sel, c).max()))
        out[c] = ((f1_t >= base_t + MARGIN) & (sel.f1_valid_CF[c] >= sel.baseline_valid_C[c] + MARGIN)
                  & (purity_F < DETECTOR_PURITY) & eligible_C[c])
    return out


def report(halves: list[SplitCounts], lay: ConceptLayout, sel: Selection, eligible_C: np.ndarray, purity_F: np.ndarray,
           ci: tuple[np.ndarray, np.ndarray] | None = None):
    """Test-half figures at the valid choices -> (concept_f1 rows, concepts columns, per-feature best).
    ``ci``: [C, F] lower and upper ends of the bootstrap interval of F1(feature) - F1(closest baseline)
    (:mod:`esmsae.index.bootstrap`); with it a match also needs the lower end above 0."""
    valid, test = halves
    C, F = valid.tp.shape[:2]
    T = len(THRESHOLDS)
    thr = np.tile(np.asarray(THRESHOLDS), len(lay.lags))  # flat (lag, threshold) index -> threshold
    lag_of = np.repeat(np.asarray(lay.lags), T)  # flat index -> lag
    rows, per_c = [], []
    f1_test_CF = np.zeros((C, F))
    beats_CF = point_matches(halves, lay, sel, eligible_C, purity_F)  # the one rule; the interval is added below
    if ci is not None:
        beats_CF &= ci[0] > 0
    for c in range(C):
        prec, rec, f1 = feature_prf(test, lay, c)
        t = sel.t_CF[c]
        ar = np.arange(F)
        f1_test_CF[c] = f1[ar, t]
        triv = trivial_f1(test, lay, c)
        aa_t = float(aa_rule_f1(test, lay, c)[sel.aa_rule_C[c]])
        rules_t = rule_f1(test, lay, c)[sel.rule_CK[c]]  # [families] test F1 of each family's valid-chosen rule
        local_t = float(rules_t.max())
        win_t = _window_test(test, lay, sel, c)
        keep = np.flatnonzero((sel.f1_valid_CF[c] > 0.01) | (test.tp[c][ar, t] > 0) & (f1_test_CF[c] > 0.01))
        if len(keep):
            tk = t[keep]
            rows.append(
                pd.DataFrame(
                    {
                        "feature": keep,
                        "concept": lay.names[c],
                        "threshold": thr[tk],
                        "lag": lag_of[tk],
                        "f1_valid": sel.f1_valid_CF[c][keep],
                        "precision": prec[keep, tk],
                        "recall": rec[keep, tk],
                        "f1": f1_test_CF[c][keep],
                        "tp_residues": test.tp[c][keep, tk],
                        "active_residues": test.act[lay.source[c]][keep, tk],
                        "hit_domains": test.dom[c][keep, tk],
                        "trivial_f1": triv,
                        "aa_rule_f1": aa_t,
                        "local_rule_f1": local_t,
                        "window_f1": float(win_t.max()),
                        "ci_lo": ci[0][c][keep] if ci is not None else np.nan,
                        "ci_hi": ci[1][c][keep] if ci is not None else np.nan,
                        "f1_residue": residue_f1(test, lay, c)[keep, tk],
                        "beats_baselines": beats_CF[c][keep],
                    }
                )
            )
        best_valid = int(sel.f1_valid_CF[c].argmax()) if F else -1
        per_c.append(
            {
                "recall_over": "domains" if lay.is_domain[c] else "residues",
                "catch_all": bool(lay.catch_all[c]),
                "eligible": bool(eligible_C[c]),
                "coverage": test.n_res[c] / max(test.src_res[lay.source[c]], 1),
                "trivial_f1": triv,
                "aa_rule": AMINO_ACIDS[sel.aa_rule_C[c]],
                "aa_rule_f1_valid": sel.aa_f1_valid_C[c],
                "aa_rule_f1": aa_t,
                **_baseline_columns(test, valid, lay, sel, c, triv, aa_t, rules_t),
                "best_feature": best_valid,
                "best_feature_f1": float(f1_test_CF[c][best_valid]) if F else 0.0,
                "best_feature_f1_valid": float(sel.f1_valid_CF[c][best_valid]) if F else 0.0,
                "best_feature_lag": int(lag_of[t[best_valid]]) if F else 0,
                "best_feature_ci_lo": float(ci[0][c, best_valid]) if ci is not None and F else np.nan,
                "best_feature_ci_hi": float(ci[1][c, best_valid]) if ci is not None and F else np.nan,
                "best_feature_f1_residue": float(residue_f1(test, lay, c)[best_valid, t[best_valid]]) if F else 0.0,
                # one feature is a lucky draw among thousands: the typical one of the top 10 on valid
                "top10_median_f1": float(np.median(f1_test_CF[c][np.argsort(-sel.f1_valid_CF[c])[:10]])) if F else 0.0,
                "n_features_f1_05": int((f1_test_CF[c] > 0.5).sum()),
                "n_features_beat_baselines": int(beats_CF[c].sum()),
            }
        )
    cols = [
        "feature",
        "concept",
        "threshold",
        "lag",
        "f1_valid",
        "precision",
        "recall",
        "f1",
        "tp_residues",
        "active_residues",
        "hit_domains",
        "trivial_f1",
        "aa_rule_f1",
        "local_rule_f1",
        "window_f1",
        "ci_lo",
        "ci_hi",
        "f1_residue",
        "beats_baselines",
    ]
    df = pd.concat(rows) if rows else pd.DataFrame(columns=cols)
    b = sel.best_c_F
    has = b >= 0
    bc = np.where(has, b, 0)
    ar = np.arange(F)
    best = {
        "concept": np.where(has, np.array(lay.names + [""], dtype=object)[np.where(has, b, -1)], ""),
        "threshold": np.where(has, thr[sel.t_CF[bc, ar]] if C else 0.0, 0.0),
        "lag": np.where(has, lag_of[sel.t_CF[bc, ar]] if C else 0, 0),
        "f1_valid": np.where(has, sel.f1_valid_CF[bc, ar] if C else 0.0, 0.0),
        "f1": np.where(has, f1_test_CF[bc, ar] if C else 0.0, 0.0),
        "trivial_f1": np.where(has, np.array([p["trivial_f1"] for p in per_c] + [0.0])[np.where(has, b, -1)], 0.0),
        "aa_rule_f1": np.where(has, np.array([p["aa_rule_f1"] for p in per_c] + [0.0])[np.where(has, b, -1)], 0.0),
        "local_rule_f1": np.where(
            has, np.array([p["local_rule_f1"] for p in per_c] + [0.0])[np.where(has, b, -1)], 0.0
        ),
        "match": np.where(has, beats_CF[bc, ar] if C else False, False),
    }
    precs, recs = np.zeros(F), np.zeros(F)
    for c in np.unique(b[has]):
        prec, rec, _ = feature_prf(test, lay, c)
        fs = np.flatnonzero(b == c)
        precs[fs], recs[fs] = prec[fs, sel.t_CF[c, fs]], rec[fs, sel.t_CF[c, fs]]
    best["precision"], best["recall"] = precs, recs
    return df, pd.DataFrame(per_c, columns=PER_CONCEPT_COLUMNS), best


PER_CONCEPT_COLUMNS = (
    ["recall_over", "catch_all", "eligible", "coverage", "trivial_f1", "aa_rule", "aa_rule_f1_valid", "aa_rule_f1"]
    + [f"{fam}_{x}" for fam in RULE_FAMILIES for x in ("rule", "f1")]
    + [
        "local_rule",
        "local_rule_f1_valid",
        "local_rule_f1",
    ]
    + [f"{col}_{x}" for col in WINDOW_COLUMNS.values() for x in ("f1_valid", "f1", "f1_residue", "threshold")]
    + [
        "best_baseline",
        "best_baseline_f1_valid",
        "best_baseline_f1",
        "baseline_max_f1",
        "best_feature",
        "best_feature_f1",
        "best_feature_f1_valid",
        "best_feature_f1_residue",
        "best_feature_lag",
        "best_feature_ci_lo",
        "best_feature_ci_hi",
        "top10_median_f1",
        "n_features_f1_05",
        "n_features_beat_baselines",
    ]
)


def _baseline_columns(
    test: SplitCounts,
    valid: SplitCounts,
    lay: ConceptLayout,
    sel: Selection,
    c: int,
    triv: float,
    aa_t: float,
    rules_t: np.ndarray,
) -> dict:
    """Per concept: each local family's rule (chosen on valid) with its test F1, the best local rule,
    and the best baseline of all (the one with the best valid F1) with its test F1."""
    out: dict = {}
    rules_v = rule_f1(valid, lay, c)[sel.rule_CK[c]]
    for k, fam in enumerate(RULE_FAMILIES):
        out[f"{fam}_rule"] = RULE_NAMES[sel.rule_CK[c, k]]
        out[f"{fam}_f1"] = float(rules_t[k])
    k = int(np.argmax(rules_v))
    out["local_rule"], out["local_rule_f1_valid"], out["local_rule_f1"] = (
        RULE_NAMES[sel.rule_CK[c, k]],
        float(rules_v[k]),
        float(rules_t[k]),
    )
    win_t = _window_test(test, lay, sel, c)
    win_res = _window_test(test, lay, sel, c, per_residue=True)
    cands = [
        ("fire everywhere", trivial_f1(valid, lay, c), triv),
        (f"every {AMINO_ACIDS[sel.aa_rule_C[c]]}", sel.aa_f1_valid_C[c], aa_t),
        (out["local_rule"], float(rules_v[k]), float(rules_t[k])),
    ]
    for m, (wname, col) in enumerate(WINDOW_COLUMNS.items()):
        fv = float(sel.win_f1_valid_CM[c, m]) if sel.win_f1_valid_CM is not None else 0.0
        out[f"{col}_f1_valid"], out[f"{col}_f1"], out[f"{col}_f1_residue"] = fv, float(win_t[m]), float(win_res[m])
        out[f"{col}_threshold"] = float(WIN_THRESHOLDS[sel.win_t_CM[c, m]]) if sel.win_t_CM is not None else np.nan
        cands.append((f"learned {wname} (logistic, one-hot)", fv, float(win_t[m])))
    name, fv, ft = max(cands, key=lambda x: x[1])
    out["best_baseline"], out["best_baseline_f1_valid"], out["best_baseline_f1"] = name, float(fv), float(ft)
    # what a matching feature must beat on test
    out["baseline_max_f1"] = float(max(triv, aa_t, rules_t.max(), win_t.max()))
    return out


def _window_test(test: SplitCounts, lay: ConceptLayout, sel: Selection, c: int, per_residue: bool = False):
    """[M] test F1 of each window model at its valid-chosen threshold (zeros without window models)."""
    if sel.win_t_CM is None:
        return np.zeros(W_MODELS)
    return window_f1(test, lay, c, per_residue)[np.arange(W_MODELS), sel.win_t_CM[c]]


def aa_purity(aa_FA: np.ndarray, n_res_A: np.ndarray) -> dict[str, np.ndarray]:
    """The amino-acid control of every feature, over all indexed residues: its top residue type,
    the share of its firing on that type (purity) and its F1 for the pseudo-concept "is that
    amino acid" (precision = purity, recall = that type's residues it fires on)."""
    fires = aa_FA.sum(1)
    top = aa_FA.argmax(1)
    hit = aa_FA[np.arange(len(top)), top]
    purity = np.where(fires > 0, hit / np.maximum(fires, 1), 0.0)
    rec = hit / np.maximum(n_res_A[top], 1)
    return {
        "aa_top": np.where(fires > 0, np.array(list(AMINO_ACIDS))[top], ""),
        "aa_purity": purity,
        "aa_f1": _f1(purity, rec),
    }
