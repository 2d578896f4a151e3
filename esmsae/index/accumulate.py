"""What the index's streaming pass accumulates (:class:`Stream`: bounded by features and groups, never
by proteins), what it counts by (:class:`Layout`), the per-batch update (:func:`_add_batch`) and the
sum over ranks under torchrun (:func:`_reduce_stream`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from esmsae.config import IndexConfig
from esmsae.index.clusters import (
    ClusterSpill,
)
from esmsae.index.composition import FiringSpill
from esmsae.index.concept_f1 import (
    aa_codes,
)
from esmsae.index.group_stats import length_bin, length_edges
from esmsae.index.protein_table import ProteinTable
from esmsae.index.proteins import Item
from esmsae.index.streaming import CSRWriter, Reservoir, TopN, TrackSpill
from esmsae.index.tables import HIST_EDGES


@dataclass
class Layout:
    """Names and ids of what the build counts: concepts and their label sources, groupings and
    their groups (all fixed by the protein set before the pass)."""

    concept_names: list[str]
    concept_ids: dict[str, int]
    source_names: list[str]
    source_ids: dict[str, int]
    concept_source: np.ndarray  # [C] source id of each concept
    groupings: list[str]
    group_names: dict[str, list[str]]
    group_ids: dict[str, dict[str, int]]
    length_edges: np.ndarray  # inner edges of the protein-length bins the group test stratifies by

    @classmethod
    def of(cls, table: ProteinTable, length_bins: int = 1) -> "Layout":
        labs = [lab for v in table.labels.values() for lab in v]
        source_of = {c: lab.source for lab in labs for c in lab.spans}  # concept names carry their source
        concept_names = sorted(source_of)
        source_names = sorted({lab.source for lab in labs})
        source_ids = {s: i for i, s in enumerate(source_names)}
        group_names = table.group_names()
        groupings = sorted(group_names)
        return cls(
            concept_names,
            {c: i for i, c in enumerate(concept_names)},
            source_names,
            source_ids,
            np.array([source_ids[source_of[c]] for c in concept_names], np.int64),
            groupings,
            group_names,
            {g: {n: i for i, n in enumerate(names)} for g, names in group_names.items()},
            length_edges(table.grouped_lengths(), length_bins),
        )


@dataclass
class Stream:
    """Everything the streaming pass accumulates; its size depends on the features (and groups),
    never on the number of proteins."""

    fire_res_F: np.ndarray
    fire_prot_F: np.ndarray
    sum_F: np.ndarray
    max_F: np.ndarray
    hist_FH: np.ndarray
    top: TopN
    res: Reservoir
    n_fire_G: dict[str, np.ndarray]  # grouping -> [groups, length bins, F] proteins counted for the feature
    sum_max_G: dict[str, np.ndarray]  # grouping -> [groups, F] sum of per-protein max activations
    aa_FA: np.ndarray = None  # [F, 20] firing residues per amino acid (the amino-acid control)
    n_res_A: np.ndarray = None  # [20] indexed residues per amino acid
    ends_F2: np.ndarray = None  # [F, 2] firing residues in the first / last 10% of their protein (position profile)
    firing: FiringSpill | None = None  # per grouped protein: composition and counted features (the composition control)
    clusters: ClusterSpill | None = (
        None  # per clustered protein: pooled LM vector and counted features (embedding clusters)
    )
    cluster_sources: tuple = ()  # only proteins of these sources are clustered (empty: all)
    n_res: int = 0
    last_pairs: list = field(default_factory=list)
    skipped_model: list[str] = field(default_factory=list)
    struct_rows: list[tuple] = field(default_factory=list)

    @classmethod
    def empty(cls, F: int, cfg: IndexConfig, layout: Layout) -> "Stream":
        B = len(layout.length_edges) + 1
        shape = {g: (len(layout.group_names[g]), F) for g in layout.groupings}
        return cls(
            np.zeros(F, np.int64),
            np.zeros(F, np.int64),
            np.zeros(F, np.float64),
            np.zeros(F, np.float32),
            np.zeros((F, len(HIST_EDGES) - 1), np.int64),
            TopN(F, cfg.top_n),
            Reservoir(F, cfg.reservoir, cfg.seed),
            {g: np.zeros((G, B, F), np.int64) for g, (G, F) in shape.items()},
            {g: np.zeros(sh, np.float64) for g, sh in shape.items()},
            np.zeros((F, 20), np.int64),
            np.zeros(20, np.int64),
            np.zeros((F, 2), np.int64),
        )


def _reduce_stream(st: "Stream") -> None:
    """All-reduce the running statistics in place: counts and sums add, maxima take the max.
    Integer sums are exact; float64 sums change only in their last bits (summation order)."""
    from esmsae.core.dist import all_reduce_

    arrays = [
        st.fire_res_F,
        st.fire_prot_F,
        st.hist_FH,
        st.aa_FA,
        st.n_res_A,
        st.ends_F2,
        st.sum_F,
        *st.n_fire_G.values(),
        *st.sum_max_G.values(),
    ]
    for a in arrays:
        all_reduce_(torch.from_numpy(a), "sum")  # numpy and torch share the memory
    all_reduce_(torch.from_numpy(st.max_F), "max")
    st.n_res = int(all_reduce_(torch.tensor([st.n_res], dtype=torch.int64), "sum")[0])


def _add_counts(target: np.ndarray, keys: np.ndarray, weights: np.ndarray | None = None) -> None:
    """``target.flat[key] += 1`` (or ``+= weight``) for every key, repeats included. Sized by the
    keys present, not by the target: a bincount with minlength = features x histogram bins moved
    13 MB a batch at 10,240 latents."""
    if not len(keys):
        return
    u, inv = np.unique(keys, return_inverse=True)
    # a view of the target: targets are contiguous arrays or 1-D column views (ends_F2[:, j])
    flat = target.reshape(-1)
    flat[u] += np.bincount(inv, weights=weights).astype(flat.dtype, copy=False)


def _add_batch(
    st: Stream,
    sae,
    batch: list[Item],
    acts: list[torch.Tensor],
    layout: Layout,
    csr: CSRWriter,
    spill: TrackSpill,
    group_statistic: str = "fires",
    pooled_k: int = 10,
) -> list[int]:
    """One batch of proteins' sparse codes into the running statistics; returns how many features
    fire on each protein. The SAE encodes the whole batch at once and every per-feature count is
    one bincount over the batch's (residue, feature) pairs: per-protein encodes and ``np.add.at``
    left the index at 45% LM time (bench/index_scaling.py). Only the example offers, labelled
    proteins' codes and group counts go protein by protein."""
    F = len(st.fire_prot_F)
    H = st.hist_FH.shape[1]
    len_P = np.array([a.shape[0] for a in acts], np.int64)
    off_P = np.r_[0, np.cumsum(len_P)]
    with torch.no_grad():
        lat = sae.encode(torch.cat(acts).to(sae.W_dec.device))
    acts_TK, idx_TK = lat.acts_BK.float().cpu().numpy(), lat.idx_BK.cpu().numpy()
    nz = acts_TK > 0
    t_R = np.nonzero(nz)[0].astype(np.int64)  # token of the batch (sorted)
    f_R = idx_TK[nz].astype(np.int64)
    v_R = acts_TK[nz]
    p_R = np.searchsorted(off_P, t_R, side="right") - 1  # protein of the batch
    r_R = t_R - off_P[p_R]  # residue within its protein
    # per-feature counts over the batch
    st.n_res += int(off_P[-1])
    aa_T = (
        np.concatenate([aa_codes(it.sequence)[:n] for it, n in zip(batch, len_P)])
        if len(batch)
        else np.zeros(0, np.int64)
    )
    st.n_res_A += np.bincount(aa_T[aa_T >= 0], minlength=20)
    a_R = aa_T[t_R]
    ok = a_R >= 0
    _add_counts(st.aa_FA, f_R[ok] * 20 + a_R[ok])
    L_R = len_P[p_R]
    _add_counts(st.ends_F2[:, 0], f_R[r_R < 0.1 * L_R])
    _add_counts(st.ends_F2[:, 1], f_R[r_R >= 0.9 * L_R])
    _add_counts(st.fire_res_F, f_R)
    _add_counts(st.sum_F, f_R, v_R.astype(np.float64))
    hb = np.clip(np.searchsorted(HIST_EDGES, v_R, side="right") - 1, 0, len(HIST_EDGES) - 2)
    _add_counts(st.hist_FH, f_R * H + hb)
    # (protein, feature) pairs: max, residue count and the track of each
    order = np.lexsort((r_R, f_R, p_R))
    ps, fs, rs, vs = p_R[order], f_R[order], r_R[order], v_R[order]
    key = ps * F + fs
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(key)]
    pair_p, pair_f = ps[starts], fs[starts]
    pair_v = np.maximum.reduceat(vs, starts) if len(starts) else np.zeros(0, np.float32)
    _add_counts(st.fire_prot_F, pair_f)
    np.maximum.at(st.max_F, pair_f, pair_v)
    pair_bounds = np.searchsorted(pair_p, np.arange(len(batch) + 1))
    res_bounds = np.searchsorted(p_R, np.arange(len(batch) + 1))
    n_active = np.diff(pair_bounds).tolist()
    # example offers for the whole batch; a pair's track goes to disk once, when first kept
    pidx_B = np.array([it.pidx for it in batch], np.int64)
    pair_pidx = pidx_B[pair_p] if len(pair_p) else np.zeros(0, np.int64)
    pair_off = np.full(len(pair_p), -1, np.int64)
    pair_n = ends - starts

    def tracks(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new = np.unique(q[pair_off[q] < 0])
        if len(new):
            pair_off[new] = spill.put_many(starts[new], ends[new], rs, vs)
        return pair_off[q], pair_n[q]

    st.top.offer_batch(pair_f, pair_v, pair_pidx, tracks)
    st.res.offer_batch(pair_f, pair_v, pair_pidx, tracks)
    st.last_pairs = []  # per protein: the features counted for groupings and their per-protein max (embedding clusters)
    for j, it in enumerate(batch):
        i = it.pidx
        lo, hi = pair_bounds[j], pair_bounds[j + 1]
        feats, vmax = pair_f[lo:hi], pair_v[lo:hi]
        counted, counted_max = feats, vmax
        if group_statistic == "pooled_topk" and (
            it.groups or st.clusters is not None
        ):  # esm-sae: the top-k of the mean-pooled code
            a, b = res_bounds[j], res_bounds[j + 1]
            pooled = np.bincount(f_R[a:b], weights=v_R[a:b], minlength=F)[feats] / max(int(len_P[j]), 1)
            keep = np.argsort(-pooled, kind="stable")[:pooled_k]
            counted, counted_max = feats[keep], vmax[keep]
        st.last_pairs.append((counted, counted_max))
        if it.groups:
            gb = length_bin(len(it.sequence), layout.length_edges)
            for g, grp in it.groups.items():
                gi = layout.group_ids[g][grp]
                st.n_fire_G[g][gi, gb, counted] += 1
                st.sum_max_G[g][gi, feats] += vmax
            if st.firing is not None:
                a = aa_codes(it.sequence)
                st.firing.put(
                    gb,
                    [layout.group_ids[g][it.groups[g]] if g in it.groups else -1 for g in layout.groupings],
                    np.bincount(a[a >= 0], minlength=20),
                    counted,
                )
        if it.labels:
            a, b = res_bounds[j], res_bounds[j + 1]
            csr.add(i, r_R[a:b], f_R[a:b], v_R[a:b])
        if it.structure:  # full tracks of proteins with a structure, to colour it by any feature
            st.struct_rows.extend(
                (
                    i,
                    int(f),
                    float(m),
                    rs[starts[q] : ends[q]].astype(np.int32).tolist(),
                    vs[starts[q] : ends[q]].astype(np.float32).tolist(),
                )
                for f, m, q in zip(feats, vmax, range(lo, hi))
            )
    return n_active
