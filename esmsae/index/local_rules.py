"""Local-sequence baselines for concepts: rules that read only the residues around a position.

A feature that "detects TM helices" must do better than what a 1982 hydropathy plot already does
(Kyte & Doolittle 1982: the mean hydropathy over a 19-residue window above 1.6 marks a TM helix),
and a "signal peptide" feature better than "the first 25 residues". Each family below is a bank
of rules; the rule of each family is chosen per concept on the valid proteins (as each feature's
threshold is) and scored on the test proteins, with the same precision / recall definitions as
the features (:mod:`esmsae.index.concept_f1`).

Families:

* ``hydropathy``: Kyte-Doolittle mean over a centred window of w residues >= theta;
* ``aa_window``: the fraction of one amino acid in a centred +-w window >= theta;
* ``position``: the first w residues, or the last w residues;
* ``position_hydropathy``: the first w residues AND the hydropathy rule (signal peptides are an
  N-terminal hydrophobic stretch);
* ``charge``: the fraction of K + R in a centred +-w window >= theta (the positive-inside rule of
  membrane topology, von Heijne 1986: cytoplasmic loops are rich in K and R);
* ``motif``: the residues of a classic PROSITE pattern (:data:`MOTIFS`, e.g. the P-loop
  ``[AG]-x(4)-G-K-[ST]`` of ATP / GTP binding, PS00017), alone or widened by +-w residues.
"""
from __future__ import annotations

import re

import numpy as np

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# Kyte & Doolittle (1982), J Mol Biol 157:105, Table 2
KYTE_DOOLITTLE = {
    "A": 1.8,
    "R": -4.5,
    "N": -3.5,
    "D": -3.5,
    "C": 2.5,
    "Q": -3.5,
    "E": -3.5,
    "G": -0.4,
    "H": -3.2,
    "I": 4.5,
    "L": 3.8,
    "K": -3.9,
    "M": 1.9,
    "F": 2.8,
    "P": -1.6,
    "S": -0.8,
    "T": -0.7,
    "W": -0.9,
    "Y": -1.3,
    "V": 4.2,
}
FAMILIES = ("hydropathy", "aa_window", "position", "position_hydropathy", "charge", "motif")

_KD = np.zeros(256, np.float32)  # X, B, Z, U, O: 0 (neutral)
for _a, _v in KYTE_DOOLITTLE.items():
    _KD[ord(_a)] = _v
_AA = np.full(256, -1, np.int64)
_AA[np.frombuffer(AMINO_ACIDS.encode(), np.uint8)] = np.arange(20)

HYDRO_WINDOWS = (7, 11, 15, 19, 23)
HYDRO_THETAS = tuple(np.round(np.arange(-1.0, 3.01, 0.2), 2))
AA_HALF_WINDOWS = (3, 7, 10)
AA_THETAS = (0.15, 0.25, 0.35, 0.5)
POSITIONS = (10, 15, 20, 25, 30, 40, 60)
CHARGE_HALF_WINDOWS = (3, 7, 10, 15)
CHARGE_THETAS = (0.1, 0.15, 0.2, 0.25, 0.35)
# PROSITE patterns (Sigrist et al. 2013), as regular expressions; x(a,b) -> .{a,b}
MOTIFS = {
    "P-loop [AG]x4GK[ST] (PS00017)": r"[AG].{4}GK[ST]",
    "C2H2 zinc finger (PS00028)": r"C.{2,4}C.{3}[LIVMFYWC].{8}H.{3,5}H",
    "EF-hand calcium-binding (PS00018)": r"D[^W][DNS][^ILVFYW][DENSTG][DNQGHRK][^GP][LIVMC][DENQSTAGC].{2}[DE]",
    "N-glycosylation N-{P}-[ST]-{P} (PS00001)": r"N[^P][ST][^P]",
    "ATP synthase / kinase glycine loop G-x-G-x-x-G": r"G.G..G",
    "Walker B [RK]x3Gx3LhhhhD": r"[RK].{3}G.{3}L[LIVMFA]{4}D",
}
MOTIF_WIDEN = (0, 5, 15)
POS_HYDRO = tuple((w, h, t) for w in (20, 25, 30, 40) for h in (7, 11, 15) for t in (0.6, 1.0, 1.4, 1.8))


def _rules() -> tuple[list[str], np.ndarray]:
    names, fam = [], []
    for w in HYDRO_WINDOWS:
        for t in HYDRO_THETAS:
            names.append(f"Kyte-Doolittle mean over {w} residues >= {t:g}")
            fam.append(0)
    for a in AMINO_ACIDS:
        for w in AA_HALF_WINDOWS:
            for t in AA_THETAS:
                names.append(f"{a} in >= {t:.0%} of a +-{w} window")
                fam.append(1)
    for w in POSITIONS:
        names.append(f"first {w} residues")
        fam.append(2)
        names.append(f"last {w} residues")
        fam.append(2)
    for w, h, t in POS_HYDRO:
        names.append(f"first {w} residues and Kyte-Doolittle mean over {h} >= {t:g}")
        fam.append(3)
    for w in CHARGE_HALF_WINDOWS:
        for t in CHARGE_THETAS:
            names.append(f"K+R in >= {t:.0%} of a +-{w} window")
            fam.append(4)
    for m in MOTIFS:
        for w in MOTIF_WIDEN:
            names.append(f"motif {m}" + (f" +-{w}" if w else ""))
            fam.append(5)
    return names, np.asarray(fam, np.int64)


RULE_NAMES, RULE_FAMILY = _rules()
N_RULES = len(RULE_NAMES)


def _window_mean(x_L: np.ndarray, w: int) -> np.ndarray:
    """Mean of x over a centred window of w residues (shorter at the ends: the mean of what is there)."""
    c = np.r_[0.0, np.cumsum(x_L, dtype=np.float64)]
    L = len(x_L)
    lo = np.clip(np.arange(L) - w // 2, 0, L)
    hi = np.clip(np.arange(L) + (w - w // 2), 0, L)
    return (c[hi] - c[lo]) / np.maximum(hi - lo, 1)


def fire_matrix(seq: str) -> np.ndarray:
    """[L, N_RULES] bool: where each rule fires on this sequence."""
    b = np.frombuffer(seq.encode("ascii"), np.uint8)
    L = len(b)
    kd = _KD[b]
    cols = []
    hyd = {}
    for w in HYDRO_WINDOWS:
        m = _window_mean(kd, w)
        hyd[w] = m
        cols.append(m[:, None] >= np.asarray(HYDRO_THETAS)[None, :])
    aa = _AA[b]
    onehot = np.zeros((L, 20), np.float32)
    ok = aa >= 0
    onehot[np.flatnonzero(ok), aa[ok]] = 1.0
    c = np.vstack([np.zeros((1, 20)), np.cumsum(onehot, 0, dtype=np.float64)])
    idx = np.arange(L)
    per_w = []
    for w in AA_HALF_WINDOWS:
        lo, hi = np.clip(idx - w, 0, L), np.clip(idx + w + 1, 0, L)
        per_w.append((c[hi] - c[lo]) / np.maximum(hi - lo, 1)[:, None])  # [L, 20]
    frac = np.stack(per_w, 1)  # [L, W, 20]
    aa_cols = frac.transpose(0, 2, 1)[:, :, :, None] >= np.asarray(AA_THETAS)[None, None, None, :]  # [L, 20, W, T]
    cols.append(aa_cols.reshape(L, -1))
    pos = []
    for w in POSITIONS:
        pos += [idx < w, idx >= L - w]
    cols.append(np.stack(pos, 1))
    cols.append(np.stack([(idx < w) & (_hyd(hyd, kd, h) >= t) for w, h, t in POS_HYDRO], 1))
    kr = ((b == ord("K")) | (b == ord("R"))).astype(np.float64)
    ckr = np.r_[0.0, np.cumsum(kr)]
    charge = []
    for w in CHARGE_HALF_WINDOWS:
        lo, hi = np.clip(idx - w, 0, L), np.clip(idx + w + 1, 0, L)
        f = (ckr[hi] - ckr[lo]) / np.maximum(hi - lo, 1)
        charge.append(f[:, None] >= np.asarray(CHARGE_THETAS)[None, :])
    cols.append(np.concatenate(charge, 1))
    cols.append(motif_matrix(seq))
    out = np.concatenate(cols, 1)
    assert out.shape == (L, N_RULES)
    return out


def motif_matrix(seq: str) -> np.ndarray:
    """[L, motifs * widenings] bool: residues inside a PROSITE match (overlapping matches found too),
    widened by each of :data:`MOTIF_WIDEN` residues on either side."""
    L = len(seq)
    out = np.zeros((L, len(MOTIFS) * len(MOTIF_WIDEN)), bool)
    for j, pat in enumerate(MOTIFS.values()):
        hit = np.zeros(L + 1, np.int64)
        for m in re.finditer(f"(?=({pat}))", seq):  # lookahead: every start, overlapping
            a, e = m.start(), m.start() + len(m.group(1))
            hit[a] += 1
            hit[e] -= 1
        core = np.cumsum(hit)[:L] > 0
        for k, w in enumerate(MOTIF_WIDEN):
            if w == 0:
                out[:, j * len(MOTIF_WIDEN) + k] = core
            else:
                c = np.r_[0, np.cumsum(core)]
                i = np.arange(L)
                out[:, j * len(MOTIF_WIDEN) + k] = (c[np.clip(i + w + 1, 0, L)] - c[np.clip(i - w, 0, L)]) > 0
    return out


def _hyd(cache: dict, kd: np.ndarray, w: int) -> np.ndarray:
    if w not in cache:
        cache[w] = _window_mean(kd, w)
    return cache[w]


def best_in_family(f1_valid_R: np.ndarray) -> np.ndarray:
    """[n families]: the rule of each family with the best valid F1 (ties: the first, a simpler rule)."""
    out = np.zeros(len(FAMILIES), np.int64)
    for k in range(len(FAMILIES)):
        rs = np.flatnonzero(RULE_FAMILY == k)
        out[k] = rs[int(np.argmax(f1_valid_R[rs]))]
    return out
