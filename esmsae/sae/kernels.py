"""The SAE's kernels: the sparse-backward gather of the chosen pre-activations, an exact row-wise
top-k that beats ``Tensor.topk`` over wide rows on CPU, and dense -> padded sparse latents.
Kept apart from the model (:mod:`esmsae.sae.model`), as sparsify keeps its fused encoder."""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Latents(NamedTuple):
    acts_BK: Tensor  # activation values (zeros are padding; a padding entry's index may repeat a real one)
    idx_BK: Tensor  # latent indices


class _GatheredPre(torch.autograd.Function):
    """The pre-activations ``x @ W^T + b`` at K chosen latents per token, with a sparse backward.

    The forward takes the values already computed (by one dense matmul, no graph), so
    autograd never keeps or differentiates the dense [B, F] pre-activations: gradient
    reaches only the K chosen latents of each token. The encoder weight gradient is then a
    sparse (F x B) @ (B x D) product over B*K non-zeros instead of a dense matmul (Gao et
    al. 2024, "Scaling and evaluating sparse autoencoders", appendix on sparse kernels),
    which halves the dense FLOPs of a training step. Used for the TopK latents and for
    the AuxK dead latents alike.
    """

    @staticmethod
    def forward(ctx, x_BD: Tensor, W_FD: Tensor, b_F: Tensor, vals_BK: Tensor, idx_BK: Tensor):  # type: ignore[override]
        ctx.save_for_backward(x_BD, W_FD, idx_BK)
        return vals_BK.clone()

    @staticmethod
    def backward(ctx, g_BK: Tensor):  # type: ignore[override]
        x_BD, W_FD, idx_BK = ctx.saved_tensors
        g_BK = g_BK.contiguous()
        Fn, (B, K) = W_FD.shape[0], idx_BK.shape
        flat_idx = idx_BK.reshape(-1)
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx_BK, W_FD, per_sample_weights=g_BK, mode="sum")
        if ctx.needs_input_grad[1]:
            # CSR with one row per latent: sort the B*K (token, latent) pairs by latent.
            # Each gradient row is then written once (measured 2.7x faster than a COO
            # sparse.mm at d_in 960, 16,384 latents, k 64).
            order = torch.argsort(flat_idx)
            crow = torch.zeros(Fn + 1, dtype=torch.long, device=x_BD.device)
            torch.cumsum(torch.bincount(flat_idx, minlength=Fn), 0, out=crow[1:])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
                G_FB = torch.sparse_csr_tensor(
                    crow, torch.div(order, K, rounding_mode="floor"), g_BK.reshape(-1)[order], (Fn, B),
                    check_invariants=False,
                )
                grad_W = G_FB @ x_BD
        if ctx.needs_input_grad[2]:
            grad_b = torch.bincount(flat_idx, weights=g_BK.reshape(-1), minlength=Fn).to(g_BK.dtype)
        return grad_x, grad_W, grad_b, None, None


TOPK_GROUPS = 16


def topk_rows(x_BF: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact row-wise top-k (unsorted), faster than ``Tensor.topk`` over wide rows on CPU.

    View each row as G strided groups of C = F / G columns and take the max over the groups
    for every column (one vectorised pass). The row's top-k elements all lie in the k columns
    with the largest maxima: a column whose max is below the k-th largest element cannot
    hold any of them, and at most k columns can have a max at or above it. So top-k runs on
    C column maxima and then on the G * k candidates instead of on all F values.
    """
    B, Fn = x_BF.shape
    G = TOPK_GROUPS
    if x_BF.device.type != "cpu" or Fn % G or Fn // G < 4 * k:
        return x_BF.topk(k, dim=-1, sorted=False)
    C = Fn // G
    x_BGC = x_BF.view(B, G, C)
    _, col_BK = x_BGC.amax(1).topk(k, dim=-1, sorted=False)
    cand_BGK = x_BGC.gather(2, col_BK.unsqueeze(1).expand(B, G, k))
    vals_BK, j_BK = cand_BGK.reshape(B, G * k).topk(k, dim=-1, sorted=False)
    full_BGK = torch.arange(0, Fn, C, device=x_BF.device).view(1, G, 1) + col_BK.unsqueeze(1)
    return vals_BK, full_BGK.reshape(B, G * k).gather(1, j_BK)


def _to_sparse(dense_BF: Tensor) -> Latents:
    """Dense non-negative latents -> padded (acts_BK, idx_BK) with K = max active per row."""
    nnz = int((dense_BF > 0).sum(-1).max()) if dense_BF.numel() else 0
    k = max(nnz, 1)
    vals, idx = dense_BF.topk(k, dim=-1, sorted=False)
    return Latents(vals, idx)
