"""One small activation object per SAE architecture (as SAELens' ``TopK`` / ``BatchTopK`` modules):
how the pre-activations of centred, normalised inputs become sparse latents, in training and at
inference. :class:`~esmsae.sae.model.SAE` chooses one in ``__init__`` and has no architecture branches.

Batch statistics that must be the *global* batch's under data parallelism (the BatchTopK threshold)
are not computed here with collectives: the trainer passes a function in (``batch_threshold``), as
sparsify passes ``total_variance`` in.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esmsae.config import SAEConfig
from esmsae.sae.kernels import Latents, _GatheredPre, _to_sparse, topk_rows

# (relu'd pre-activations [B, F] without a graph, k) -> the value a latent must reach to be kept
BatchThreshold = Callable[[Tensor, int], Tensor]


class Activation:
    """Base: latents of centred inputs; the forward pass's reconstruction and L1 term. ``sae`` is the
    :class:`esmsae.sae.model.SAE` that owns the activation (typed loosely: model.py imports this module);
    only its public encode / decode methods are used (``dense_pre``, ``pre``, ``decode_normalized``)."""

    name = ""
    auxk = True  # AuxK (dead latents model the residual) applies
    l1 = False  # the loss carries an L1 penalty

    def __init__(self, cfg: SAEConfig):
        self.k = cfg.k

    def latents(
        self, sae: nn.Module, xc_BD: Tensor, *, train: bool, batch_threshold: BatchThreshold | None = None
    ) -> tuple[Latents, Tensor | None]:
        """Sparse latents (differentiable in training), and the dense pre-activations computed without
        a graph when there are some (AuxK reuses them instead of a second matmul), else None."""
        raise NotImplementedError

    def forward_outputs(
        self, sae: nn.Module, xc_BD: Tensor, *, train: bool, batch_threshold: BatchThreshold | None = None
    ) -> tuple[Latents, Tensor, Tensor, Tensor | None]:
        """(latents, reconstruction in normalised space, L1 term, dense pre-activations or None)."""
        lat, pre_BF = self.latents(sae, xc_BD, train=train, batch_threshold=batch_threshold)
        return lat, sae.decode_normalized(*lat), xc_BD.new_zeros(()), pre_BF


class TopK(Activation):
    """The k largest pre-activations per token, ReLU'd (Gao et al. 2024); only those k receive
    gradient (:class:`~esmsae.sae.kernels._GatheredPre`)."""

    name = "topk"

    def latents(self, sae, xc_BD, *, train, batch_threshold=None):
        pre_BF = sae.dense_pre(xc_BD)
        vals_BK, idx_BK = topk_rows(pre_BF, self.k)
        acts_BK = F.relu(_GatheredPre.apply(xc_BD, sae.W_enc, sae.b_enc, vals_BK, idx_BK))
        return Latents(acts_BK, idx_BK), pre_BF


class BatchTopK(Activation):
    """Training: the k x B largest ReLU'd pre-activations of the batch (Bussmann et al. 2024), and a
    running mean of the smallest kept value. Inference: that threshold, one for every latent, which
    is JumpReLU with a shared threshold (the trainer saves it as JumpReLU, as SAELens does)."""

    name = "batchtopk"

    def latents(self, sae, xc_BD, *, train, batch_threshold=None):
        pre_BF = F.relu(sae.pre(xc_BD, train))
        if not train:
            return _to_sparse(pre_BF * (pre_BF > sae.threshold)), None
        flat = pre_BF.flatten()
        if batch_threshold is None:
            vals, pos = flat.topk(min(self.k * pre_BF.shape[0], flat.numel()), sorted=False)
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask[pos] = True
        else:
            with torch.no_grad():
                t_glob = batch_threshold(pre_BF.detach(), self.k)
            mask = (flat >= t_glob) & (flat > 0)
            vals = flat[mask]
            if t_glob > 0:
                # the global batch's smallest kept value, the same on every rank; each rank's own smallest
                # kept value differs, and ranks that lerp toward it drift apart (one process keeps t_glob)
                self.update_threshold(sae, t_glob)
                return _to_sparse(pre_BF * mask.view_as(pre_BF)), None
        kept = vals[vals > 0]
        if kept.numel():
            self.update_threshold(sae, kept.detach().min())
        return _to_sparse(pre_BF * mask.view_as(pre_BF)), None

    @staticmethod
    @torch.no_grad()
    def update_threshold(sae: nn.Module, t: Tensor) -> None:
        """The inference threshold: a running mean of the smallest value kept per training batch."""
        if sae.threshold > 0:
            sae.threshold.lerp_(t, 0.01)
        else:
            sae.threshold.copy_(t)


class ReLU(Activation):
    """ReLU with an L1 penalty on the codes (decoder rows are unit norm, so Conerly et al.'s
    norm-weighted L1 is sum |z|). Training decodes densely and returns no sparse latents."""

    name = "relu"
    auxk = False
    l1 = True

    def latents(self, sae, xc_BD, *, train, batch_threshold=None):
        return _to_sparse(F.relu(sae.pre(xc_BD, train))), None

    def forward_outputs(self, sae, xc_BD, *, train, batch_threshold=None):
        pre_BF = F.relu(sae.pre(xc_BD, train))  # the SAE's own encode: bf16 under set_train_dtype
        recon_BD = pre_BF @ sae.W_dec + sae.b_dec
        B = xc_BD.shape[0]
        lat = (
            Latents(pre_BF.new_zeros(B, 0), torch.zeros(B, 0, dtype=torch.long, device=xc_BD.device))
            if train
            else _to_sparse(pre_BF.detach())
        )
        return lat, recon_BD, pre_BF.sum(-1).mean(), None


class JumpReLU(Activation):
    """relu(h) * (h > threshold), one threshold per latent (Rajamanoharan et al. 2024; SAELens'
    JumpReLU, and esmsae's BatchTopK SAEs as saved for inference). Inference only."""

    name = "jumprelu"

    def latents(self, sae, xc_BD, *, train, batch_threshold=None):
        pre_BF = sae.pre(xc_BD, train)
        return _to_sparse(F.relu(pre_BF) * (pre_BF > sae.threshold)), None


ACTIVATIONS: dict[str, type[Activation]] = {a.name: a for a in (TopK, BatchTopK, ReLU, JumpReLU)}
