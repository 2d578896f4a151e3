"""The composition control of group enrichment.

A residue-detector feature ("fires on E") is "enriched" in whichever group's proteins hold more E:
on the UniRep-free demo, 299 of 514 residue detectors with a top group were top in the kingdom
richest in their amino acid, against ~171 expected by chance. The length-stratified CMH test
(:mod:`esmsae.index.group_stats`) cannot see that. This control stratifies the same test by the
protein's length bin **and** its content of the feature's top amino acid (three bins: below 0.75x,
0.75-1.25x, above 1.25x that amino acid's frequency over all indexed residues); an enrichment that
is significant by length alone but not once composition is stratified is marked
*composition-driven*.

The feature's top amino acid is only known after the streaming pass, so the pass spills, per grouped
protein, its length bin, group ids, amino-acid counts and the features counted for it to a scratch
file (bounded memory); :func:`composition_counts` reads it back once.
"""
from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np

from esmsae.index.group_stats import enrichment

COMP_BINS = (0.75, 1.25)  # fractions of the amino acid's overall frequency
N_COMP = len(COMP_BINS) + 1


class FiringSpill:
    """Per grouped protein: length bin, group id per grouping (-1: none), 20 amino-acid counts, and the
    features counted for it (int32 on disk)."""

    def __init__(self, folder: Path, groupings: list[str]):
        self.path = Path(folder) / "group_firing.bin"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "w+b")  # read back through this handle: the scratch folder may be unlinked
        self.groupings = groupings
        self.lenbin, self.n, self.groups, self.aa = array("i"), array("q"), array("i"), array("i")

    def put(self, lenbin: int, group_ids: list[int], aa_counts_20: np.ndarray, feats: np.ndarray) -> None:
        self.f.write(np.asarray(feats, np.int32).tobytes())
        self.lenbin.append(lenbin)
        self.n.append(len(feats))
        self.groups.extend(group_ids)
        self.aa.extend(np.asarray(aa_counts_20, np.int64).tolist())

    def read(self, start: int, stop: int) -> np.ndarray:
        """The int32 features stored between element offsets start and stop."""
        self.f.flush()
        self.f.seek(4 * start)
        return np.frombuffer(self.f.read(4 * (stop - start)), np.int32)

    def arrays(self):
        P = len(self.lenbin)
        return (
            np.frombuffer(self.lenbin, np.int32) if P else np.zeros(0, np.int32),
            np.frombuffer(self.n, np.int64) if P else np.zeros(0, np.int64),
            (
                np.frombuffer(self.groups, np.int32).reshape(P, len(self.groupings))
                if P
                else np.zeros((0, len(self.groupings)), np.int32)
            ),
            np.frombuffer(self.aa, np.int32).reshape(P, 20) if P else np.zeros((0, 20), np.int32),
        )

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()
        try:
            self.path.unlink()
        except OSError:
            pass


def composition_bins(aa_P20: np.ndarray, freq_A: np.ndarray) -> np.ndarray:
    """[P, 20] composition bin of every protein for every amino acid."""
    frac = aa_P20 / np.maximum(aa_P20.sum(1, keepdims=True), 1)
    edges = np.asarray(COMP_BINS)[None, :, None] * freq_A[None, None, :]  # [1, 2, 20]
    return (frac[:, None, :] >= edges).sum(1).astype(np.int64)


def composition_counts(
    spill: FiringSpill,
    top_aa_F: np.ndarray,
    freq_A: np.ndarray,
    n_groups: list[int],
    n_len_bins: int,
    chunk: int = 4096,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per grouping: (n_fire [G, S, F], n_prot [20, G, S]) with strata S = length bin x composition bin
    of the feature's top amino acid (for n_prot: of each amino acid)."""
    lenbin, n, groups, aa = spill.arrays()
    F = len(top_aa_F)
    S = n_len_bins * N_COMP
    cb = composition_bins(aa, freq_A)  # [P, 20]
    out = []
    offsets = np.r_[0, np.cumsum(n)]
    for g, G in enumerate(n_groups):
        fire = np.zeros(G * S * F, np.int64)
        prot = np.zeros((20, G, S), np.int64)
        gid = groups[:, g] if len(groups) else np.zeros(0, np.int32)
        has = gid >= 0
        strata_P20 = lenbin[:, None].astype(np.int64) * N_COMP + cb  # [P, 20]
        for a in range(20):
            np.add.at(prot[a], (gid[has], strata_P20[has, a]), 1)
        for lo in range(0, len(n), chunk):
            hi = min(len(n), lo + chunk)
            sel = np.flatnonzero(has[lo:hi]) + lo
            if not len(sel):
                continue
            block = spill.read(int(offsets[lo]), int(offsets[hi]))  # this chunk's features, one read
            keep = np.repeat(has[lo:hi], n[lo:hi])
            pf = block[keep].astype(np.int64)
            pp = np.repeat(sel, n[sel])
            s = strata_P20[pp, top_aa_F[pf]]
            fire += np.bincount((gid[pp].astype(np.int64) * S + s) * F + pf, minlength=G * S * F)
        out.append((fire.reshape(G, S, F), prot))
    return out


def composition_enrichment(
    n_fire_GSF: np.ndarray, n_prot_AGS: np.ndarray, top_aa_F: np.ndarray, min_group_size: int = 1
) -> dict[str, np.ndarray]:
    """CMH over length x composition strata, one feature set per top amino acid -> log_odds, p, q [G, F]
    (q: Benjamini-Hochberg over all tested cells, as the length-only test)."""
    from esmsae.index.group_stats import benjamini_hochberg

    G, S, F = n_fire_GSF.shape
    lo, p = np.zeros((G, F)), np.ones((G, F))
    tested = None
    for a in range(20):
        fs = np.flatnonzero(top_aa_F == a)
        if not len(fs):
            continue
        e = enrichment(n_fire_GSF[:, :, fs], n_prot_AGS[a], "cmh", min_group_size)
        lo[:, fs], p[:, fs] = e["log_odds"], e["p"]
        tested = e["tested"]
    if tested is None:
        tested = np.zeros(G, bool)
    q = np.ones_like(p)
    if tested.any():
        q[tested] = benjamini_hochberg(p[tested].ravel()).reshape(p[tested].shape)
    return {"log_odds": lo, "p": p, "q": q, "tested": tested}
