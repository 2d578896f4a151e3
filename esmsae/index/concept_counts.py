"""The concept pass's counting: one pass over the labelled proteins' sparse codes into per-side integer
counts (features at each lag and threshold, the amino-acid rule, the local rules, the learned windows).
The F1 built from these counts, the choices on valid and the report on test are in
:mod:`esmsae.index.concept_f1`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from esmsae.index.labels import concept_kind, is_catch_all
from esmsae.index.local_rules import N_RULES, fire_matrix
from esmsae.index.splits import side_index, split_of
from esmsae.index.streaming import LATENT_BITS, MAX_LATENTS
from esmsae.index.window_model import WIN_THRESHOLDS, WINDOW_NAMES, levels

if TYPE_CHECKING:
    from esmsae.index.proteins import Item
    from esmsae.index.streaming import CSRWriter
    from esmsae.index.window_model import WindowModels

W_MODELS, W_T = len(WINDOW_NAMES), len(WIN_THRESHOLDS)
THRESHOLDS = (0.0, 0.15, 0.5, 0.6, 0.8)  # fractions of each feature's max (InterPLM)
# A left-to-right LM's state at t has read residues 1..t only: a feature marking a segment can fire
# only once the segment has begun. For causal LMs the match rule may read the state at t + lag for
# residue t, the lag chosen per (feature, concept) on valid with the threshold. The +-20 window
# baseline reaches 20 residues right, so it has at least the reach of every lag here.
CAUSAL_LAGS = (0, 4, 8, 16)
SPLITS = ("valid", "test")
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_AA_LUT = np.full(256, -1, np.int64)
_AA_LUT[np.frombuffer(AMINO_ACIDS.encode(), np.uint8)] = np.arange(20)


def aa_codes(seq: str) -> np.ndarray:
    """Residue type 0..19 per position (-1 for X, B, Z, U, O)."""
    return _AA_LUT[np.frombuffer(seq.encode(), np.uint8)]


@dataclass
class ConceptLayout:
    names: list[str]
    source: np.ndarray  # [C] source id
    is_domain: np.ndarray  # [C] bool: recall over domains (else over residues)
    catch_all: np.ndarray  # [C] bool
    has_window: np.ndarray | None = None  # [C] bool: a learned window model exists (else not eligible)
    lags: tuple[int, ...] = (0,)  # feature state offsets tried (causal LMs: CAUSAL_LAGS)


def concept_layout(names: list[str], concept_source: np.ndarray, has_window=None, lags=(0,)) -> ConceptLayout:
    return ConceptLayout(
        list(names),
        np.asarray(concept_source, np.int64),
        np.array([concept_kind(n) == "domain" for n in names], bool),
        np.array([is_catch_all(n) for n in names], bool),
        None if has_window is None else np.asarray(has_window, bool),
        tuple(lags),
    )


@dataclass
class SplitCounts:
    """Everything F1 needs, for one half of the labelled proteins."""

    tp: np.ndarray  # [C, F, T] firing residues inside the concept
    dom: np.ndarray  # [C, F, T] domains with a firing residue
    act: np.ndarray  # [S, F, T] firing residues the source labels (known residues)
    n_res: np.ndarray  # [C] concept residues
    n_dom: np.ndarray  # [C] distinct domains
    n_prot: np.ndarray  # [C] proteins with the concept
    src_res: np.ndarray  # [S] residues the source labels
    aa_tp: np.ndarray  # [C, 20] concept residues of each amino acid
    aa_dom: np.ndarray  # [C, 20] domains containing that amino acid
    aa_act: np.ndarray  # [S, 20] labelled residues of each amino acid
    rule_tp: np.ndarray  # [C, R] concept residues where each local-sequence rule fires
    rule_dom: np.ndarray  # [C, R] domains with a residue where the rule fires
    rule_act: np.ndarray  # [S, R] labelled residues where the rule fires
    win_tp: np.ndarray  # [C, M, W_T] concept residues where each learned window model fires
    win_dom: np.ndarray  # [C, M, W_T] domains with a residue where it fires
    win_act: np.ndarray  # [C, M, W_T] labelled residues (of the concept's source) where it fires

    @classmethod
    def zeros(cls, C: int, S: int, F: int, T: int) -> "SplitCounts":
        z = np.zeros
        return cls(
            z((C, F, T), np.int64),
            z((C, F, T), np.int64),
            z((S, F, T), np.int64),
            z(C, np.int64),
            z(C, np.int64),
            z(C, np.int64),
            z(S, np.int64),
            z((C, 20), np.int64),
            z((C, 20), np.int64),
            z((S, 20), np.int64),
            z((C, N_RULES), np.int64),
            z((C, N_RULES), np.int64),
            z((S, N_RULES), np.int64),
            z((C, W_MODELS, W_T), np.int64),
            z((C, W_MODELS, W_T), np.int64),
            z((C, W_MODELS, W_T), np.int64),
        )


def level_counts(feat: np.ndarray, level: np.ndarray, F: int, T: int) -> np.ndarray:
    """Counts per feature of entries whose level exceeds each threshold index -> [F, T]."""
    h = np.bincount(feat * (T + 1) + level, minlength=F * (T + 1)).reshape(F, T + 1)
    # entries at level l are active for thresholds 0..l-1: reverse cumulative sum
    return np.cumsum(h[:, ::-1], axis=1)[:, ::-1][:, 1:]


def _dedup_spans(spans, known: np.ndarray) -> list[tuple[int, int]]:
    """Distinct spans with at least one labelled residue (nested spans stay separate domains)."""
    return [(a, b) for a, b in sorted(set(spans)) if known[a:b].any()]


def concept_counts(
    csr: "CSRWriter",
    items: "dict[int, Item]",
    fmax_F: np.ndarray,
    concept_ids: dict[str, int],
    source_ids: dict[str, int],
    layout: ConceptLayout,
    windows: "WindowModels | None" = None,
) -> list[SplitCounts]:
    """One pass over the labelled proteins' sparse codes -> [valid counts, test counts] (train-side
    proteins, if any were indexed, are skipped: they fitted the window models)."""
    F, C, S, T = len(fmax_F), len(concept_ids), len(source_ids), len(THRESHOLDS)
    # the feature counts' last axis is (lag, threshold) flattened: index = lag_index * T + threshold_index
    lags = layout.lags
    halves = [SplitCounts.zeros(C, S, F, T * len(lags)) for _ in SPLITS]
    thr = np.asarray(THRESHOLDS, np.float32)
    safe_max = np.where(fmax_F > 0, fmax_F, 1.0).astype(np.float32)
    for pidx, key, val in csr.read():
        it = items[pidx]
        side = side_index(it.labels[0]) if it.labels else split_of(it.sequence)
        if side < 0:
            continue
        h = halves[side]
        res0, feat0 = key >> LATENT_BITS, key & (MAX_LATENTS - 1)
        o = np.argsort(res0, kind="stable")
        res0, feat0, val0 = res0[o], feat0[o], val[o]
        # level = how many thresholds the normalised activation exceeds (level >= 1: fires)
        level0 = (val0[:, None] / safe_max[feat0][:, None] > thr[None, :]).sum(1)
        _sequence_counts(h, it, concept_ids, source_ids, layout, windows)
        for li, lag in enumerate(lags):
            keep = res0 >= lag  # the state at t + lag stands for residue t
            sl = slice(li * T, (li + 1) * T)
            _feature_counts(h, it, res0[keep] - lag, feat0[keep], level0[keep], F, T, sl, concept_ids, source_ids,
                            layout)
    return halves


def _sequence_counts(h: SplitCounts, it, concept_ids, source_ids, layout: ConceptLayout, windows) -> None:
    """The counts that do not depend on the SAE: concept sizes, amino-acid, local-rule and window baselines."""
    aa_L = aa_codes(it.sequence)
    onehot = np.zeros((len(aa_L) + 1, 20), np.int64)
    fire_LR = fire_matrix(it.sequence)
    cum_fire = np.vstack([np.zeros((1, N_RULES), np.int32), np.cumsum(fire_LR, 0, dtype=np.int32)])
    for lab in it.labels:
        s = source_ids[lab.source]
        known = lab.known_mask()
        h.rule_act[s] += fire_LR[known].sum(0)
        h.src_res[s] += int(known.sum())
        kaa = aa_L[known & (aa_L >= 0)]
        h.aa_act[s] += np.bincount(kaa, minlength=20)
        onehot[:] = 0
        good = known & (aa_L >= 0)
        onehot[1:][good, aa_L[good]] = 1
        cum = np.cumsum(onehot, 0)
        wm = windows.by_source.get(lab.source) if windows is not None else None
        if wm is not None:
            wlev_LMC = levels(wm.probs(it.sequence))  # [L, M, Cs]
            wc = np.array([concept_ids.get(c, -1) for c in wm.concepts])
            ok_c = wc >= 0
            h.win_act[wc[ok_c]] += _above(wlev_LMC[known])[:, ok_c].transpose(1, 0, 2)
            wcol = {c: j for j, c in enumerate(wm.concepts)}
        for c, cname, spans, mask in _concept_masks(lab, known, concept_ids):
            h.n_res[c] += int(mask.sum())
            h.n_dom[c] += len(spans)
            h.n_prot[c] += 1
            h.aa_tp[c] += np.bincount(aa_L[mask & (aa_L >= 0)], minlength=20)
            h.rule_tp[c] += fire_LR[mask].sum(0)
            ab = np.array(spans, np.int64)
            if wm is not None and cname in wcol:
                wl_LM = wlev_LMC[:, :, wcol[cname]]
                h.win_tp[c] += _above(wl_LM[mask])
                if layout.is_domain[c]:  # a domain is hit at t when its highest level exceeds t
                    top_DM = np.stack([wl_LM[a:b][known[a:b]].max(0) for a, b in spans])
                    h.win_dom[c] += _above(top_DM)
            if layout.is_domain[c]:
                h.aa_dom[c] += ((cum[ab[:, 1]] - cum[ab[:, 0]]) > 0).sum(0)
                h.rule_dom[c] += ((cum_fire[ab[:, 1]] - cum_fire[ab[:, 0]]) > 0).sum(0)


def _concept_masks(lab, known: np.ndarray, concept_ids: dict[str, int]):
    """(concept id, name, distinct spans with a labelled residue, mask of its labelled residues) per concept
    of one label record."""
    for cname, raw in lab.spans.items():
        spans = _dedup_spans(raw, known)
        if not spans:
            continue
        mask = np.zeros(len(known), bool)
        for a, b in spans:
            mask[a:b] = True
        yield concept_ids[cname], cname, spans, mask & known


def _feature_counts(h: SplitCounts, it, res, feat, level, F: int, T: int, sl: slice, concept_ids, source_ids,
                    layout: ConceptLayout) -> None:
    """The SAE features' counts of one protein at one lag into ``h.tp / dom / act[..., sl]``."""
    for lab in it.labels:
        s = source_ids[lab.source]
        known = lab.known_mask()
        ok = known[res]
        h.act[s][:, sl] += level_counts(feat[ok], level[ok], F, T)
        for c, _, spans, mask in _concept_masks(lab, known, concept_ids):
            inside = mask[res]
            h.tp[c][:, sl] += level_counts(feat[inside], level[inside], F, T)
            if not layout.is_domain[c]:
                continue
            ab = np.array(spans, np.int64)
            # a domain is hit at threshold t when any of its residues fires at t: per
            # (domain, feature) the highest level inside the domain, by interval membership
            lo, hi = np.searchsorted(res, ab[:, 0]), np.searchsorted(res, ab[:, 1])
            n = hi - lo
            if n.sum() == 0:
                continue
            idx = np.repeat(lo - np.r_[0, np.cumsum(n)[:-1]], n) + np.arange(n.sum())
            k = np.repeat(np.arange(len(spans)), n) * F + feat[idx]
            lv = level[idx]
            order = np.lexsort((-lv, k))
            first = np.r_[True, k[order][1:] != k[order][:-1]]
            h.dom[c][:, sl] += level_counts(k[order][first] % F, lv[order][first], F, T)


def _above(level_NX: np.ndarray) -> np.ndarray:
    """[N, ...] levels -> [..., W_T] how many of the N exceed each window threshold index."""
    return (level_NX[..., None] > np.arange(W_T)).sum(0)


