"""Learned local baselines: a logistic regression on the one-hot sequence window of each residue.

A feature of a protein LM "knows" a concept only if it beats what a model of the residues around a
position can learn from the same labels. Hand rules (:mod:`esmsae.index.local_rules`) are weak
controls: an audit of the demo found a logistic model of the +-20 one-hot window ahead of the
"matched" features on 5 of 6 concepts. So every concept gets three such models, fitted on the
*train* side only (:mod:`esmsae.index.splits`; never on a protein a feature is measured on):

* ``+-10 window`` and ``+-20 window``: residues t-w .. t+w;
* ``left 20 window``: residues t-20 .. t, all that a left-to-right LM (UniRep) has read at t.

Each window position has 22 symbols: the 20 amino acids, "other" (X, B, Z, U, O) and "beyond the
end", so a model also learns "within 20 residues of the N-terminus" (signal peptides). The model
is one weight per (offset, symbol, concept) plus a bias, fitted jointly for the concepts of one
label source on its labelled residues (full-batch L-BFGS on the mean logistic loss with a small L2
penalty, to convergence). Its probability is thresholded at :data:`WIN_THRESHOLDS`; the threshold
is chosen on valid like every feature's, and the F1 definitions are the features' own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from esmsae.index.labels import Labeled

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
N_SYMBOLS = 22  # 20 amino acids, 20 = other, 21 = beyond the sequence
OTHER, BEYOND = 20, 21
WINDOWS = {"+-10 window": (-10, 10), "+-20 window": (-20, 20), "left 20 window": (-20, 0)}
WINDOW_NAMES = tuple(WINDOWS)
WINDOW_COLUMNS = {"+-10 window": "window10", "+-20 window": "window20", "left 20 window": "left20"}  # concepts table
WIN_THRESHOLDS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MAX_TRAIN_RESIDUES = 150_000  # per label source; residues drawn at random beyond it
MIN_TRAIN_PROTEINS = 5  # a concept needs this many train proteins for a model (else: not eligible)
L2 = 1e-4
_SYM = np.full(256, OTHER, np.int64)
_SYM[np.frombuffer(AMINO_ACIDS.encode(), np.uint8)] = np.arange(20)


def symbols(seq: str) -> np.ndarray:
    """Symbol 0..20 of each residue (20 for X and the other rare letters)."""
    return _SYM[np.frombuffer(seq.encode("ascii"), np.uint8)]


def window_index(sym_L: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """[L, hi - lo + 1] column of each (residue, offset) in the flat (offset, symbol) weight table."""
    L = len(sym_L)
    pos_LO = np.arange(L)[:, None] + np.arange(lo, hi + 1)[None, :]
    inside = (pos_LO >= 0) & (pos_LO < L)
    s_LO = np.where(inside, sym_L[np.clip(pos_LO, 0, max(L - 1, 0))], BEYOND)
    return np.arange(hi - lo + 1)[None, :] * N_SYMBOLS + s_LO


@dataclass
class SourceModels:
    """The three window models of one label source: weights [offsets * 22, C] and bias [C] each."""

    concepts: list[str]
    weight: dict[str, np.ndarray]
    bias: dict[str, np.ndarray]
    loss: dict[str, float]  # final mean logistic loss on the train residues (the fit's own record)
    n_train_proteins: np.ndarray  # [C] train proteins carrying each concept

    def probs(self, seq: str) -> np.ndarray:
        """[L, windows, C] probability of each concept at each residue, for each window model."""
        sym = symbols(seq)
        out = []
        for name in WINDOW_NAMES:
            lo, hi = WINDOWS[name]
            idx_LO = window_index(sym, lo, hi)
            z_LC = self.weight[name][idx_LO].sum(1) + self.bias[name]
            out.append(1.0 / (1.0 + np.exp(-z_LC)))
        return np.stack(out, 1)


@dataclass
class WindowModels:
    """Per label source its fitted models (absent: no train proteins for that source)."""

    by_source: dict[str, SourceModels]

    def has_model(self, concept: str, source: str) -> bool:
        m = self.by_source.get(source)
        if m is None or concept not in m.concepts:
            return False
        return bool(m.n_train_proteins[m.concepts.index(concept)] >= MIN_TRAIN_PROTEINS)

    def frame(self):
        """The models as rows (source, window, concept, bias, weights, train proteins, fit loss): the index's
        ``window_models`` table, so a screen or an external check scores the very baselines of the match rule."""
        import pandas as pd

        rows = []
        for s, m in self.by_source.items():
            for name in WINDOW_NAMES:
                for j, c in enumerate(m.concepts):
                    rows.append((s, name, c, float(m.bias[name][j]), m.weight[name][:, j].astype(np.float32).tolist(),
                                 int(m.n_train_proteins[j]), float(m.loss[name])))
        return pd.DataFrame(rows, columns=["source", "window", "concept", "bias", "weights", "n_train_proteins",
                                           "fit_loss"])

    @classmethod
    def from_frame(cls, df) -> "WindowModels":
        out = {}
        for s, g in df.groupby("source", sort=True):
            concepts = sorted(g["concept"].unique())
            weight, bias, loss = {}, {}, {}
            for name in WINDOW_NAMES:
                h = g[g["window"] == name].set_index("concept").loc[concepts]
                weight[name] = np.stack([np.asarray(w, np.float32) for w in h["weights"]], 1)
                bias[name] = h["bias"].to_numpy(np.float32)
                loss[name] = float(h["fit_loss"].iloc[0])
            n = g[g["window"] == WINDOW_NAMES[0]].set_index("concept").loc[concepts, "n_train_proteins"].to_numpy()
            out[s] = SourceModels(concepts, weight, bias, loss, n)
        return cls(out)


def _residues(train: list[Labeled], concepts: list[str], rng: np.random.Generator):
    """(symbols of each protein, [N] protein, [N] position, [N, C] targets) of the known residues."""
    cid = {c: i for i, c in enumerate(concepts)}
    syms, prot, pos, ys = [], [], [], []
    n_prot = np.zeros(len(concepts), np.int64)
    for k, lab in enumerate(train):
        known = lab.known_mask()
        y_LC = np.zeros((len(lab.sequence), len(concepts)), np.float32)
        for c, spans in lab.spans.items():
            if c in cid:
                for a, b in spans:
                    y_LC[a:b, cid[c]] = 1.0
                n_prot[cid[c]] += bool(any(known[a:b].any() for a, b in spans))
        keep = np.flatnonzero(known)
        syms.append(symbols(lab.sequence))
        prot.append(np.full(len(keep), k, np.int64))
        pos.append(keep)
        ys.append(y_LC[keep])
    if not syms:
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, len(concepts)), np.float32), n_prot
    prot_N, pos_N, y_NC = np.concatenate(prot), np.concatenate(pos), np.concatenate(ys)
    if len(prot_N) > MAX_TRAIN_RESIDUES:
        pick = np.sort(rng.choice(len(prot_N), MAX_TRAIN_RESIDUES, replace=False))
        prot_N, pos_N, y_NC = prot_N[pick], pos_N[pick], y_NC[pick]
    return syms, prot_N, pos_N, y_NC, n_prot


def _fit_one(idx_NO: np.ndarray, y_NC: np.ndarray, n_cols: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Logistic regression sum_o W[idx[n, o]] + b, fitted to convergence by full-batch L-BFGS.

    The gradient is written out: d loss / d W = X^T (p - y) / (N C) with X the one-hot [N, n_cols] design, a
    sparse product with X^T built once (the same numbers as autograd's embedding-bag backward, which
    scatters N * O rows one by one: 0.75 s against 0.03 s a step at 150,000 residues here)."""
    import warnings

    import torch

    idx = torch.from_numpy(idx_NO)
    y = torch.from_numpy(y_NC)
    N, n_off = idx.shape
    C = y.shape[1]
    with warnings.catch_warnings():  # "sparse CSR support is in beta": a plain CSR x dense product
        warnings.simplefilter("ignore", UserWarning)
        xt = torch.sparse_coo_tensor(torch.stack([idx.flatten(), torch.arange(N).repeat_interleave(n_off)]),
                                     torch.ones(N * n_off), (n_cols, N)).coalesce().to_sparse_csr()
    W = torch.zeros(n_cols, C, dtype=torch.float32)
    # start the bias at the log odds of each concept: the fit then only learns what the window adds
    prior = y.mean(0).clamp(1e-4, 1 - 1e-4)
    b = torch.log(prior / (1 - prior)).clone()
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=150, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        # EmbeddingBag(sum) gathers the O rows of each residue without materialising the one-hot [N, O * 22]
        z = torch.nn.functional.embedding_bag(idx, W, None, mode="sum") + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y) + L2 * (W * W).sum()
        r_NC = (torch.sigmoid(z) - y) / (N * C)  # d mean loss / d logit
        W.grad = xt @ r_NC + 2 * L2 * W
        b.grad = r_NC.sum(0)
        return loss

    with torch.no_grad():
        opt.step(closure)
        final = float(closure())
    return W.numpy().copy(), b.numpy().copy(), final


def fit_window_models(train: list[Labeled], concept_source: dict[str, str], seed: int = 0) -> WindowModels:
    """Fit the three window models of every label source on its train-side records.

    ``concept_source``: the concepts the index counts, with their source; a concept without a train
    protein gets no model (:meth:`WindowModels.has_model` says so and the concept is not eligible)."""
    rng = np.random.default_rng(seed)
    out = {}
    for source in sorted(set(concept_source.values())):
        concepts = sorted(c for c, s in concept_source.items() if s == source)
        recs = [lab for lab in train if lab.source == source]
        syms, prot_N, pos_N, y_NC, n_prot = _residues(recs, concepts, rng)
        if not len(prot_N):
            continue
        weight, bias, loss = {}, {}, {}
        for name in WINDOW_NAMES:
            lo, hi = WINDOWS[name]
            idx_NO = np.empty((len(prot_N), hi - lo + 1), np.int64)
            cut = np.flatnonzero(np.r_[True, prot_N[1:] != prot_N[:-1], True])  # prot_N is sorted
            for a, e in zip(cut[:-1], cut[1:]):
                idx_NO[a:e] = window_index(syms[prot_N[a]], lo, hi)[pos_N[a:e]]
            weight[name], bias[name], loss[name] = _fit_one(idx_NO, y_NC, (hi - lo + 1) * N_SYMBOLS)
        out[source] = SourceModels(concepts, weight, bias, loss, n_prot)
    return WindowModels(out)


def levels(p_LMC: np.ndarray) -> np.ndarray:
    """How many of :data:`WIN_THRESHOLDS` each probability exceeds (0 = does not fire)."""
    return (p_LMC[..., None] > np.asarray(WIN_THRESHOLDS, np.float32)).sum(-1)
