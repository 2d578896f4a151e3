"""The protein-level learned window: one linear filter over the one-hot sequence window, max-pooled over the
protein.

A feature predicts a protein's family from its maximum over the protein's residues. The local model a feature
must beat for that use is the same construction without the LM: a learned score of the one-hot window t-w ..
t+w (one weight per (offset, symbol), as :mod:`esmsae.index.window_model` per residue), maximised over t and
passed through a logistic — a one-filter convolutional network with global max pooling, the motif finder of
DeepBind (Alipanahi et al. 2015) with a single motif. It learns a family's motif where one exists (a PROSITE
pattern is one such filter with hard weights) and anything else a window of 2w + 1 residues shows anywhere in
the protein. A left-only window (t-20 .. t, what a left-to-right LM has read) is the +-10 window shifted by 10
residues: under a maximum over the protein the shift changes nothing but the edges, so the +-10 and +-20
filters cover it.

Fitted on the train proteins only (every concept of a label set at once, one filter each), by full-batch Adam
on the mean logistic loss plus an L2 penalty (a fixed number of steps; the fit's final loss is reported); the
L2 weight and the probability threshold are chosen on valid, like every learned baseline of
:mod:`esmsae.analysis.protein_concepts`.
"""
from __future__ import annotations

import numpy as np

from esmsae.index.window_model import N_SYMBOLS, window_index

WINDOWS = {"+-10 window": 10, "+-20 window": 20}
# per concept on valid; measured on the name families: 1e-4 overfits (train F1 0.87, valid 0.12 for histidine
# kinases), 1e-2 underfits (valid 0 for most families), 1e-3 generalises
L2_GRID = (3e-4, 1e-3, 3e-3)
STEPS = 200
LR = 0.1
MAX_TRAIN_PROTEINS = 3000  # every member of each concept kept; the others sampled up to this many in all


class WindowMax:
    """Fitted filters: weights [(2w+1) * 22, C], bias [C]; ``proba(seqs)`` -> [P, C]."""

    def __init__(self, w: int, weight_OC: np.ndarray, bias_C: np.ndarray, fit_loss: float):
        self.w, self.weight_OC, self.bias_C, self.fit_loss = w, weight_OC, bias_C, fit_loss

    def proba(self, seqs: list[str]) -> np.ndarray:
        import torch

        idx_NO, seg_N = _index(seqs, self.w)
        with torch.no_grad():
            s = _protein_max(torch.from_numpy(self.weight_OC), torch.from_numpy(idx_NO), torch.from_numpy(seg_N),
                             len(seqs))
            return torch.sigmoid(s + torch.from_numpy(self.bias_C)).numpy()


def _index(seqs: list[str], w: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, 2w+1] weight-table column of every (residue, offset) of all proteins, and [N] the protein of each."""
    from esmsae.index.window_model import symbols

    idx = [window_index(symbols(s), -w, w) for s in seqs]
    seg = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    return np.concatenate(idx).astype(np.int64), seg


def _protein_max(weight_OC, idx_NO, seg_N, P: int, with_argmax: bool = False):
    """[P, C]: each protein's maximum over its residues of the window score (no bias); with ``with_argmax``
    also the (residue, concept) pairs [M, 2] that attain it."""
    import torch

    score_NC = torch.nn.functional.embedding_bag(idx_NO, weight_OC, mode="sum")  # one fused gather-and-sum
    out = torch.full((P, weight_OC.shape[1]), -1e9, dtype=score_NC.dtype)
    out = out.scatter_reduce(0, seg_N[:, None].expand_as(score_NC), score_NC, reduce="amax", include_self=False)
    if not with_argmax:
        return out
    return out, (score_NC == out[seg_N]).nonzero()


def fit_window_max(seqs: list[str], y_PC: np.ndarray, w: int, l2: float, seed: int = 0) -> WindowMax:
    """One filter a concept (columns of ``y_PC``), fitted jointly on these (train) proteins.

    The gradient is written by hand: through the maximum it reaches only each protein's maximising residue,
    so it is a scatter of P x C window rows (autograd's embedding_bag backward would accumulate over all N
    residues: ~7 s a step here against ~0.2 s)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    idx_NO, seg_N = _index(seqs, w)
    idx_t, seg_t = torch.from_numpy(idx_NO), torch.from_numpy(seg_N)
    y = torch.from_numpy(y_PC.astype(np.float32))
    P, C = y.shape
    weight = 0.01 * torch.randn((2 * w + 1) * N_SYMBOLS, C, generator=g)
    # the bias starts at each concept's base rate, so the first steps move the filters, not the bias
    prior = y.mean(0).clamp(1e-3, 1 - 1e-3)
    bias = torch.log(prior / (1 - prior))
    weight.grad, bias.grad = torch.zeros_like(weight), torch.zeros_like(bias)
    opt = torch.optim.Adam([weight, bias], lr=LR)
    loss = 0.0
    for _ in range(STEPS):
        smax_PC, at_MC = _protein_max(weight, idx_t, seg_t, P, with_argmax=True)
        s = smax_PC + bias
        loss = float(torch.nn.functional.binary_cross_entropy_with_logits(s, y))
        d_PC = (torch.sigmoid(s) - y) / (P * C)  # d mean loss / d logit
        n, c = at_MC[:, 0], at_MC[:, 1]
        d_M = d_PC[seg_t[n], c]
        # a tie shares the gradient (ties are rare: real-valued scores)
        share = torch.zeros(P, C).index_put_((seg_t[n], c), torch.ones_like(d_M), accumulate=True)
        d_M = d_M / share[seg_t[n], c]
        cols = idx_t[n]  # [M, 2w+1]
        weight.grad.zero_().index_put_((cols.flatten(), c.repeat_interleave(cols.shape[1])),
                                       d_M.repeat_interleave(cols.shape[1]), accumulate=True)
        weight.grad.add_(weight, alpha=2 * l2)
        bias.grad.copy_(d_PC.sum(0))
        opt.step()
    return WindowMax(w, weight.numpy(), bias.numpy(), loss)


def train_sample(labels: np.ndarray, concepts: list[str], rng: np.random.Generator) -> np.ndarray:
    """Indices of the train proteins to fit on: every member of each concept, then others at random up to
    ``MAX_TRAIN_PROTEINS`` (bounded time; the threshold chosen on valid absorbs the changed base rate)."""
    member = np.isin(labels, concepts)
    keep = np.flatnonzero(member)
    rest = np.flatnonzero(~member)
    n_rest = max(0, MAX_TRAIN_PROTEINS - len(keep))
    return np.sort(np.concatenate([keep, rng.permutation(rest)[:n_rest]]))
