"""Bootstrap intervals for a concept match: is the feature ahead of *every* baseline on test proteins,
beyond what the choice of test proteins could explain?

The point estimates of :mod:`esmsae.index.concept_f1` choose everything on valid and report on test.
A match claimed on a few dozen test proteins can still be luck: TM strands once rested on 6. So for
every candidate (a feature whose point estimates beat every baseline on valid and test) a second
pass over the *test* proteins records per protein the counts F1 is made of (true positives, firing
residues, hit domains) for the feature at its valid-chosen threshold and lag, and for each baseline
at its valid-chosen rule or threshold. Proteins are then resampled with replacement
(:data:`N_BOOT` times; the unit is the protein, as residues of one protein are not independent),
F1 recomputed from the summed counts, and the 95% interval of F1(feature) - F1(baseline) taken for
each baseline (percentile bootstrap, Efron & Tibshirani 1993). A match needs every interval's lower
end above 0.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from esmsae.index.local_rules import FAMILIES, fire_matrix
from esmsae.index.splits import side_index, split_of
from esmsae.index.streaming import LATENT_BITS, MAX_LATENTS
from esmsae.index.window_model import WIN_THRESHOLDS, WINDOW_NAMES

if TYPE_CHECKING:
    from esmsae.index.concept_f1 import ConceptLayout, Selection
    from esmsae.index.window_model import WindowModels

N_BOOT = 1000
# fire everywhere, the amino-acid rule, one rule per hand-rule family, the learned windows (protein_counts' order)
N_BASELINES = 2 + len(FAMILIES) + len(WINDOW_NAMES)
MAX_CANDIDATES = 50  # per concept, by valid F1: the interval is for the claims a page would show
ALPHA = 0.05


def _hits(fire_L: np.ndarray, mask_L: np.ndarray, known_L: np.ndarray, spans) -> tuple[int, int, int]:
    f = fire_L & known_L
    return int((f & mask_L).sum()), int(f.sum()), sum(bool(f[a:b].any()) for a, b in spans)


def protein_counts(csr, items, fmax_F, concept_ids: dict[str, int], source_ids: dict[str, int], lay: "ConceptLayout",
                   sel: "Selection", cands: dict[int, np.ndarray], windows: "WindowModels | None"):
    """One pass over the test proteins -> per concept c in ``cands``: (counts [P, K, 3], n_res [P], n_dom [P])
    with K = the :data:`N_BASELINES` baselines then the candidate features, in order."""
    from esmsae.index.concept_counts import THRESHOLDS, _dedup_spans, aa_codes

    T = len(THRESHOLDS)
    thr = np.asarray(THRESHOLDS, np.float32)
    safe_max = np.where(fmax_F > 0, fmax_F, 1.0).astype(np.float32)
    names = list(concept_ids)
    src_of = {c: lay.source[c] for c in cands}
    rows: dict[int, list] = {c: [] for c in cands}
    for pidx, key, val in csr.read():
        it = items[pidx]
        side = side_index(it.labels[0]) if it.labels else split_of(it.sequence)
        if side != 1:
            continue
        res, feat = key >> LATENT_BITS, key & (MAX_LATENTS - 1)
        level = (val[:, None] / safe_max[feat][:, None] > thr[None, :]).sum(1)
        L = len(it.sequence)
        aa_L = aa_codes(it.sequence)
        fire_LR = fire_matrix(it.sequence)
        for lab in it.labels:
            s = source_ids[lab.source]
            known = lab.known_mask()
            wm = windows.by_source.get(lab.source) if windows is not None else None
            probs = wm.probs(it.sequence) if wm is not None else None
            for c in [c for c in cands if src_of[c] == s]:
                spans = _dedup_spans(lab.spans.get(names[c], []), known)  # the concept pass's own spans
                mask = np.zeros(L, bool)
                for a, b in spans:
                    mask[a:b] = True
                mask &= known
                fires = [np.ones(L, bool), aa_L == sel.aa_rule_C[c]]
                fires += [fire_LR[:, r] for r in sel.rule_CK[c]]
                for m in range(len(WINDOW_NAMES)):
                    if probs is not None and names[c] in wm.concepts:
                        p = probs[:, m, wm.concepts.index(names[c])]
                        fires.append(p > WIN_THRESHOLDS[sel.win_t_CM[c, m]])
                    else:
                        fires.append(np.zeros(L, bool))
                for f in cands[c]:
                    j = int(sel.t_CF[c, f])
                    lag, ti = lay.lags[j // T], j % T
                    r = res[(feat == f) & (level > ti)] - lag
                    fl = np.zeros(L, bool)
                    fl[r[r >= 0]] = True
                    fires.append(fl)
                rows[c].append(([_hits(fl, mask, known, spans) for fl in fires], int(mask.sum()), len(spans)))
    out = {}
    for c, rs in rows.items():
        if rs:
            out[c] = (np.array([r[0] for r in rs], np.int64), np.array([r[1] for r in rs]),
                      np.array([r[2] for r in rs]))
    return out


def intervals(counts_PK3: np.ndarray, n_res_P: np.ndarray, n_dom_P: np.ndarray, n_base: int, is_domain: bool,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[features, baselines] lower and upper ends of the 95% interval of F1(feature) - F1(baseline)."""
    rng = np.random.default_rng(seed)
    P = len(n_res_P)
    W_BP = rng.multinomial(P, np.full(P, 1.0 / P), size=N_BOOT).astype(np.float64)  # protein draw counts
    sums = np.einsum("bp,pkx->bkx", W_BP, counts_PK3.astype(np.float64))  # [B, K, 3]
    tp, act, dom = sums[..., 0], sums[..., 1], sums[..., 2]
    prec = tp / np.maximum(act, 1)
    rec = dom / np.maximum(W_BP @ n_dom_P, 1)[:, None] if is_domain else tp / np.maximum(W_BP @ n_res_P, 1)[:, None]
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)  # [B, K]
    diff = f1[:, n_base:, None] - f1[:, None, :n_base]  # [B, features, baselines]
    lo, hi = np.quantile(diff, [ALPHA / 2, 1 - ALPHA / 2], axis=0)
    return lo, hi


def lower_bounds(per_concept: dict, cands: dict[int, np.ndarray], lay: "ConceptLayout", n_base: int, C: int, F: int):
    """[C, F] the lowest of a candidate's interval lower ends over the baselines (NaN: not a candidate),
    and [C, F] the upper end of that same interval."""
    lo_CF, hi_CF = np.full((C, F), np.nan), np.full((C, F), np.nan)
    for c, (counts, n_res, n_dom) in per_concept.items():
        lo, hi = intervals(counts, n_res, n_dom, n_base, bool(lay.is_domain[c]), seed=c)
        worst = lo.argmin(1)
        lo_CF[c, cands[c]] = lo[np.arange(len(worst)), worst]
        hi_CF[c, cands[c]] = hi[np.arange(len(worst)), worst]
    return lo_CF, hi_CF


def candidates(beats_CF: np.ndarray, f1_valid_CF: np.ndarray) -> dict[int, np.ndarray]:
    """Per concept, up to :data:`MAX_CANDIDATES` point-estimate matches, best valid F1 first."""
    out = {}
    for c in np.flatnonzero(beats_CF.any(1)):
        fs = np.flatnonzero(beats_CF[c])
        out[int(c)] = fs[np.argsort(-f1_valid_CF[c, fs], kind="stable")][:MAX_CANDIDATES]
    return out
