"""Sparse autoencoder: one ``nn.Module`` for TopK, BatchTopK, ReLU+L1 and (imported) JumpReLU SAEs.

Shapes in names: B tokens in a batch, D input width (d_in), F latents, K active
latents kept per token.

Each architecture is one small activation object (:mod:`esmsae.sae.activations`); the kernels live
in :mod:`esmsae.sae.kernels`. The TopK path never materialises a dense gradient for the encoder: only
the K selected pre-activations of each token receive gradient (``_GatheredPre``), so the
encoder weight gradient is a sparse CSR product over B*K entries instead of an
(F x B) @ (B x D) matmul, and the decoder is an ``embedding_bag`` over the K active rows (Gao et al. 2024, "Scaling
and evaluating sparse autoencoders", sec. 3 and appendix on sparse kernels).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esmsae.config import TOKEN_NORMALIZATIONS, SAEConfig
from esmsae.core.precision import usable_dtype
from esmsae.sae.activations import ACTIVATIONS, BatchThreshold
from esmsae.sae.kernels import Latents, _GatheredPre


class ForwardOutput(NamedTuple):
    recon_BD: Tensor  # reconstruction, in the input's (raw) space
    acts_BK: Tensor
    idx_BK: Tensor
    fvu: Tensor  # fraction of variance unexplained (normalised space, batch variance)
    mse: Tensor  # per-token squared error summed over D, averaged over B (normalised space)
    auxk_loss: Tensor
    l1_loss: Tensor
    loss: Tensor


ENC_INIT_SCALE = 3 ** -0.5
ENCODE_CHUNK = 2048  # rows per dense pre-activation block at inference (bounds memory)
# With a bfloat16 encode (set_encode_dtype), 256-row blocks: the 10 MB fp32 block stays in cache
# between the matmul and the top-k that reads it back: 1.6x-2.4x faster than 2,048 rows. In fp32
# the matmul dominates and 256 rows go from 1.27x faster (d_in 320) to slower (0.87x-0.95x at
# d_in 1,280), so fp32 keeps 2,048 (bench/encode_precision.py).
ENCODE_CHUNK_LOWP = 256


class SAE(nn.Module):
    def __init__(self, cfg: SAEConfig, d_in: int | None = None, *, seed: int | None = 0, meta: dict | None = None):
        super().__init__()
        # the checkpoint's cfg (base model, layer, site, normalisation, provenance): set by
        # published.load.load_sae, empty for an SAE built in memory
        self.meta: dict = dict(meta or {})
        d_in = d_in or cfg.d_in
        if not d_in:
            raise ValueError("SAE needs d_in (from SAEConfig.d_in or the d_in argument)")
        self.cfg = cfg
        self.d_in = d_in
        Fn = cfg.n_latents
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        # Decoder rows are unit-norm dictionary directions; the encoder starts as the
        # decoder transpose, which avoids early dead latents (Gao et al. 2024, sec. 2.4;
        # Conerly et al. 2024 "Update on how we train SAEs").
        W_dec_FD = torch.randn(Fn, d_in, generator=gen)
        W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec_FD)
        # Encoder rows start at 1/sqrt(3) of the decoder's unit norm (the magnitude of
        # nn.Linear's default init): Adam's steps are then larger relative to the weights.
        # With it esmsae reaches held-out FVU 0.0190 after 400k tokens (10,240 latents, k 32,
        # the earlier demo LM's activations) against sparsify's 0.0193 and SAELens' 0.0189
        # (bench/results/train_throughput.json); the full-norm start was compared once, unrecorded.
        self.W_enc = nn.Parameter(W_dec_FD.clone() * ENC_INIT_SCALE)
        self.b_enc = nn.Parameter(torch.zeros(Fn))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # Normalisation statistics (set by fit_normalization before training).
        self.register_buffer("norm_mean", torch.zeros(d_in))
        self.register_buffer("norm_scale", torch.ones(()))
        # BatchTopK inference threshold (Bussmann et al. 2024): running mean of the
        # smallest activation kept in each training batch. JumpReLU SAEs (Rajamanoharan et
        # al. 2024; imported from SAELens) have one threshold per latent instead.
        self.register_buffer("threshold", torch.zeros(Fn) if cfg.architecture == "jumprelu" else torch.zeros(()))
        self._pre_buf_BF: Tensor | None = None  # training-only workspace, see dense_pre
        # Inference only: the encoder matmul's input dtype (None = the weights' dtype); see
        # set_encode_dtype. The low-precision copy of W_enc is cached with the version it came from.
        self.encode_dtype: torch.dtype | None = None
        self.train_dtype: torch.dtype | None = None  # mixed-precision training (set_train_dtype)
        self._W_enc_lp: tuple[int, Tensor] | None = None
        # how pre-activations become latents: one small object per architecture, chosen once
        self.activation = ACTIVATIONS[cfg.architecture](cfg)

    # ------------------------------------------------------------ reference display statistics
    def set_display_stats(self, max_F: Tensor | None, idf_F: Tensor | None) -> None:
        """Per-latent reference max and IDF shipped with the SAE (Biohub's ``max``/``idf``, or
        computed over a stated reference protein set), used by :meth:`encode_scaled`. They are
        saved in ``sae.safetensors`` as ``display_max`` / ``display_idf``."""
        Fn = self.cfg.n_latents
        for name, t in (("display_max", max_F), ("display_idf", idf_F)):
            if t is None:
                continue
            t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
            if t.numel() != Fn:
                raise ValueError(f"{name} has {t.numel()} entries, the SAE has {Fn} latents")
            if name in self._buffers:
                self._buffers[name] = t.to(self.W_enc.device)
            else:
                self.register_buffer(name, t.to(self.W_enc.device))

    def display_stats(self) -> tuple[Tensor | None, Tensor | None]:
        """(reference max [F], reference IDF [F]); None where the SAE carries none."""
        return self._buffers.get("display_max"), self._buffers.get("display_idf")

    # ------------------------------------------------------------ normalisation
    @torch.no_grad()
    def fit_normalization(self, sample_ND: Tensor) -> None:
        """Estimate dataset statistics for the configured normalisation and set b_dec."""
        x = sample_ND.float()
        mode = self.cfg.normalize
        mean = x.mean(0)
        if mode in ("center", "center_scalar"):
            self.norm_mean.copy_(mean)
        else:
            self.norm_mean.zero_()
        if mode in ("scalar", "center_scalar"):
            xc = x - self.norm_mean
            self.norm_scale.fill_(1.0 / float(xc.pow(2).sum(-1).mean().sqrt().clamp_min(1e-8)))
        else:
            self.norm_scale.fill_(1.0)
        # b_dec starts at the data mean in normalised space (a cheap stand-in for the
        # geometric median of Bricken et al. 2023).
        xn, _ = self.normalize(x)
        self.b_dec.copy_(xn.mean(0))

    def normalize(self, x_BD: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Input normalisation; per-token modes return their (shift, scale) statistics for
        :meth:`denormalize`, dataset-wide modes use the fitted buffers."""
        mode = self.cfg.normalize
        if mode in TOKEN_NORMALIZATIONS:
            if mode == "unit_norm_sqrt_d":  # SAELens constant_norm_rescale: x * sqrt(d) / |x|
                mu_B1 = x_BD.new_zeros(x_BD.shape[0], 1)
                sd_B1 = x_BD.norm(dim=-1, keepdim=True) / math.sqrt(x_BD.shape[-1])
                return x_BD / sd_B1, (mu_B1, sd_B1)
            mu_B1 = x_BD.mean(-1, keepdim=True)
            xc_BD = x_BD - mu_B1
            if mode == "layernorm":  # esmsae's own: biased std, floored
                sd_B1 = xc_BD.std(-1, keepdim=True, unbiased=False).clamp_min(1e-5)
            else:  # published SAEs put eps on the std: InterProt / SAELens / Biohub unbiased, esm-sae biased
                sd_B1 = xc_BD.std(-1, keepdim=True, unbiased=mode == "layernorm_eps") + 1e-5
            return xc_BD / sd_B1, (mu_B1, sd_B1)
        return (x_BD - self.norm_mean) * self.norm_scale, None

    def denormalize(self, xn_BD: Tensor, stats: tuple[Tensor, Tensor] | None) -> Tensor:
        if self.cfg.normalize in TOKEN_NORMALIZATIONS:
            assert stats is not None
            return xn_BD * stats[1] + stats[0]
        return xn_BD / self.norm_scale + self.norm_mean

    # ------------------------------------------------------------ encode / decode
    def dense_pre(self, xc_BD: Tensor) -> Tensor:
        """Dense pre-activations of centred inputs, computed without an autograd graph.

        In training mode the [B, F] result is written into a buffer kept across steps: a
        fresh one (168 MB at 4,096 x 10,240 fp32) is a new mmap every step, and its page
        faults cost about a fifth of the step on CPU (bench/train_throughput.py). Eval mode
        allocates, so threads sharing one model (the app) never share a buffer.
        """
        with torch.no_grad():
            if not self.training:
                return self._pre_eval(xc_BD)
            shape = (xc_BD.shape[0], self.W_enc.shape[0])
            buf = self._pre_buf_BF
            if buf is None or buf.shape != shape or buf.dtype != xc_BD.dtype or buf.device != xc_BD.device:
                buf = self._pre_buf_BF = torch.empty(shape, dtype=xc_BD.dtype, device=xc_BD.device)
            lp = self.train_dtype
            if lp is None:
                return torch.addmm(self.b_enc, xc_BD, self.W_enc.t(), out=buf)
            # mixed precision (Micikevicius et al. 2018): bf16 operands, fp32 master weights; the product
            # lands in the fp32 buffer, so top-k selection and AuxK read fp32 values
            return buf.copy_(torch.mm(xc_BD.to(lp), self.W_enc.detach().to(lp).t())).add_(self.b_enc)

    def pre_acts(self, xn_BD: Tensor) -> Tensor:
        return torch.addmm(self.b_enc, xn_BD - self.b_dec, self.W_enc.t())

    def pre(self, xc_BD: Tensor, train: bool) -> Tensor:
        """Pre-activations of centred inputs: differentiable in training (under bf16 autocast with
        ``train_dtype``: the gradients reach the fp32 weights), else the inference encode (which may run
        in ``encode_dtype``)."""
        if not train:
            return self._pre_eval(xc_BD)
        if self.train_dtype is None:
            return torch.addmm(self.b_enc, xc_BD, self.W_enc.t())
        with torch.autocast(device_type=xc_BD.device.type, dtype=self.train_dtype):
            return torch.addmm(self.b_enc, xc_BD, self.W_enc.t()).float()

    def _low_precision(self, dtype: str | torch.dtype | None, kind: str, what: str) -> torch.dtype | None:
        """A float32 / bfloat16 name or dtype as a torch dtype (None stays None); bf16 only where this
        device runs it natively (esmsae.core.precision)."""
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        if dtype is None:
            return None
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"{kind} must be 'float32' or 'bfloat16', got {dtype!r}")
        return getattr(torch, usable_dtype(dtype, self.W_enc.device, what))

    def set_train_dtype(self, dtype: str | torch.dtype | None) -> "SAE":
        """Mixed-precision training: the encoder's dense matmul in ``dtype`` ("bfloat16"), everything
        else (weights, Adam, top-k, AuxK, the sparse decoder and gradients) in fp32. None / "float32"
        = fp32 throughout."""
        dtype = self._low_precision(dtype, "training precision", "SAE training precision")
        self.train_dtype = None if dtype in (None, self.W_enc.dtype) else dtype
        return self

    def set_encode_dtype(self, dtype: str | torch.dtype | None) -> "SAE":
        """Run the inference encoder's matmul in ``dtype`` ("bfloat16"): inputs, weights and the
        result rounded to bf16 (products accumulated in fp32; PyTorch's CPU matmul has no fp32
        output for bf16 operands), then bias, ReLU / top-k in the weights' dtype. None /
        "float32" = the exact encode.

        For the index, where the LM already runs in bfloat16: the LM's own bf16 rounding moves
        the demo SAE's codes 12x more than a bf16 encode does, and the encode runs 2.8x-3.8x
        faster on this AVX512-BF16 CPU, no AMX (bench/encode_precision.py; GPUs not measured). Training never
        uses it."""
        dtype = self._low_precision(dtype, "encode dtype", "SAE encode")
        self.encode_dtype = None if dtype in (None, self.W_enc.dtype) else dtype
        self._W_enc_lp = None
        return self

    def _pre_eval(self, xc_BD: Tensor) -> Tensor:
        """Inference pre-activations of centred inputs (no graph), in ``encode_dtype`` when set."""
        lp = self.encode_dtype
        if lp is None:
            return torch.addmm(self.b_enc, xc_BD, self.W_enc.t())
        W = self.W_enc
        if self._W_enc_lp is None or self._W_enc_lp[0] != W._version or self._W_enc_lp[1].device != W.device:
            self._W_enc_lp = (W._version, W.detach().to(lp))
        return torch.mm(xc_BD.to(lp), self._W_enc_lp[1].t()).to(xc_BD.dtype).add_(self.b_enc)

    def _encode_norm(self, xn_BD: Tensor, train: bool = False) -> Latents:
        return self.activation.latents(self, xn_BD - self.b_dec, train=train)[0]

    def encode(self, x_BD: Tensor, chunk: int | None = None) -> Latents:
        """Raw activations -> sparse latents (acts_BK, idx_BK); zeros in acts are padding.

        Rows are encoded ``chunk`` at a time: the dense [rows, F] pre-activations of a whole
        long protein (35,000 residues x 10,240 latents = 1.4 GB) set the index build's peak
        memory, which then grew with the longest protein in the set (bench/index_scaling.py).
        """
        chunk = chunk or (ENCODE_CHUNK if self.encode_dtype is None else ENCODE_CHUNK_LOWP)
        parts = [self._encode_norm(self.normalize(x_BD[i:i + chunk].to(self.W_enc.dtype))[0])
                 for i in range(0, max(x_BD.shape[0], 1), chunk)]
        if len(parts) == 1:
            return parts[0]
        K = max(p.idx_BK.shape[1] for p in parts)  # relu / batchtopk: K varies by chunk
        return Latents(torch.cat([F.pad(p.acts_BK, (0, K - p.acts_BK.shape[1])) for p in parts]),
                       torch.cat([F.pad(p.idx_BK, (0, K - p.idx_BK.shape[1])) for p in parts]))

    @torch.no_grad()
    def encode_dense(self, x_BD: Tensor) -> Tensor:
        """Raw activations ``[N, d_in]`` -> dense latents ``[N, F]`` (no autograd graph)."""
        x_BD = self._check_input(x_BD)
        lat = self.encode(x_BD)
        out = torch.zeros(x_BD.shape[0], self.cfg.n_latents, dtype=lat.acts_BK.dtype, device=x_BD.device)
        return out.scatter_add_(1, lat.idx_BK, lat.acts_BK)  # add: padding (act 0) may repeat an index

    @torch.no_grad()
    def encode_sparse(self, x_BD: Tensor) -> Tensor:
        """Raw activations ``[N, d_in]`` -> a sparse COO tensor ``[N, F]`` (as Biohub's ``sae_outputs``)."""
        x_BD = self._check_input(x_BD)
        lat = self.encode(x_BD)
        live = lat.acts_BK > 0
        rows = torch.arange(x_BD.shape[0], device=x_BD.device).unsqueeze(1).expand_as(lat.idx_BK)[live]
        return torch.sparse_coo_tensor(torch.stack([rows, lat.idx_BK[live]]), lat.acts_BK[live],
                                       (x_BD.shape[0], self.cfg.n_latents), check_invariants=False).coalesce()

    @torch.no_grad()
    def encode_scaled(self, x_BD: Tensor, scale: str = "max") -> Tensor:
        """Dense latents divided by the reference per-latent max (``scale="max"``, 0-1 at the
        reference set's maximum) or by max then times IDF (``"max_idf"``, Biohub's "TF-IDF"
        normalisation). Needs display statistics (:meth:`set_display_stats`); a latent whose
        reference max is 0 (never fired there) gives 0, not NaN."""
        from esmsae.sae.scale import scale_activations

        if scale not in ("max", "max_idf"):
            raise ValueError(f"scale must be 'max' or 'max_idf', got {scale!r}")
        ref_max, ref_idf = self.display_stats()
        if ref_max is None or (scale == "max_idf" and ref_idf is None):
            raise ValueError("this SAE carries no reference display statistics (display_max / display_idf); "
                             "import a release that ships them or compute them with `esmsae index`")
        dense = self.encode_dense(x_BD)
        idf = ref_idf.to(dense) if ref_idf is not None else None
        return scale_activations(dense, ref_max.to(dense), idf, scale)

    def _check_input(self, x_BD: Tensor) -> Tensor:
        x_BD = torch.as_tensor(x_BD)
        if x_BD.dim() != 2 or x_BD.shape[1] != self.d_in:
            raise ValueError(f"SAE input must be [N, {self.d_in}] activations, got shape {tuple(x_BD.shape)}")
        return x_BD.to(self.W_enc.device)

    def decode_normalized(self, acts_BK: Tensor, idx_BK: Tensor) -> Tensor:
        return F.embedding_bag(idx_BK, self.W_dec, per_sample_weights=acts_BK, mode="sum") + self.b_dec

    def decode_dense(self, dense_BF: Tensor, x_BD: Tensor) -> Tensor:
        """Dense latents (any number active per row) -> reconstruction in the input's space
        (per-token statistics from ``x_BD``); what steering edits and decodes."""
        stats = self.normalize(x_BD.to(self.W_enc.dtype))[1] if self.cfg.normalize in TOKEN_NORMALIZATIONS else None
        return self.denormalize(dense_BF @ self.W_dec + self.b_dec, stats)

    def decode(
        self, acts_BK: Tensor, idx_BK: Tensor, x_BD: Tensor | None = None, denormalize: bool | None = None
    ) -> Tensor:
        """Sparse latents -> reconstruction, in raw space unless the SAE reconstructs in its
        normalised space (``cfg.decode_denormalize`` False, Biohub's ESM C SAEs) and
        ``denormalize`` is not forced. Evaluation and splicing pass ``denormalize=True``.

        With per-token normalisation the statistics come from ``x_BD``.
        """
        if not (self.cfg.decode_denormalize if denormalize is None else denormalize):
            return self.decode_normalized(acts_BK, idx_BK)
        stats = None
        if self.cfg.normalize in TOKEN_NORMALIZATIONS:
            if x_BD is None:
                raise ValueError(
                    f"decode() with {self.cfg.normalize} normalisation needs the input x_BD for its statistics"
                )
            _, stats = self.normalize(x_BD.to(self.W_enc.dtype))
        return self.denormalize(self.decode_normalized(acts_BK, idx_BK), stats)

    # ------------------------------------------------------------ forward / loss
    def forward(
        self,
        x_BD: Tensor,
        *,
        dead_mask_F: Tensor | None = None,
        l1_coef: float | None = None,
        error_variance: Callable[[Tensor], Tensor] | None = None,
        batch_threshold: BatchThreshold | None = None,
    ) -> ForwardOutput:
        """Reconstruction and losses. Batch statistics that must be the global batch's under data
        parallelism come from the trainer: ``error_variance`` (AuxK's normaliser of the residual
        error, default this batch's :func:`local_error_variance`) and ``batch_threshold`` (BatchTopK)."""
        x_BD = x_BD.to(self.W_enc.dtype)
        xn_BD, stats = self.normalize(x_BD)
        xc_BD = xn_BD - self.b_dec
        act = self.activation
        lat, recon_n, l1, pre_BF = act.forward_outputs(
            self, xc_BD, train=self.training, batch_threshold=batch_threshold
        )
        coef = (self.cfg.l1_coef if l1_coef is None else l1_coef) if act.l1 else 0.0
        err_BD = recon_n - xn_BD
        mse = err_BD.pow(2).sum(-1).mean()
        total_var = (xn_BD - xn_BD.mean(0)).pow(2).sum(-1).mean()
        fvu = mse / total_var.clamp_min(1e-12)

        auxk = xn_BD.new_zeros(())
        if dead_mask_F is not None and self.cfg.auxk_coef > 0 and act.auxk and bool(dead_mask_F.any()):
            # AuxK (Gao et al. 2024, sec. 2.4 / appendix A.2): the top-k_aux *dead* latents
            # model the residual error, giving them gradient so they can revive.
            # The dead latents' pre-activations come from the TopK pass's dense matmul (no
            # second one), and their gradient is sparse like the TopK latents'.
            k_aux = min(self.cfg.auxk_k, int(dead_mask_F.sum()))
            if pre_BF is None:
                pre_BF = self.dense_pre(xc_BD)
            pre_BF.masked_fill_(~dead_mask_F, -torch.inf)
            a_pre, a_idx = pre_BF.topk(k_aux, dim=-1, sorted=False)
            a_vals = F.relu(_GatheredPre.apply(xc_BD, self.W_enc, self.b_enc, a_pre, a_idx))
            e_hat = F.embedding_bag(a_idx, self.W_dec, per_sample_weights=a_vals, mode="sum")
            e_BD = (xn_BD - recon_n).detach()
            var = (error_variance or local_error_variance)(e_BD)
            auxk = torch.nan_to_num((e_hat - e_BD).pow(2).sum(-1).mean() / var.clamp_min(1e-12), nan=0.0)

        loss = mse + self.cfg.auxk_coef * auxk + coef * l1
        recon = self.denormalize(recon_n, stats)
        return ForwardOutput(recon, lat.acts_BK, lat.idx_BK, fvu, mse, auxk, l1, loss)

    def for_inference(self) -> "SAE":
        """The SAE as saved for inference: a BatchTopK SAE becomes JumpReLU with its learned threshold
        for every latent (the same codes: SAELens saves BatchTopK the same way); others are returned
        as they are."""
        if self.cfg.architecture != "batchtopk":
            return self
        cfg = SAEConfig(**{**self.cfg.__dict__, "architecture": "jumprelu", "k": 0})
        out = SAE(cfg, self.d_in, seed=None, meta=self.meta)
        state = dict(self.state_dict())
        state["threshold"] = self.threshold.detach().reshape(()).expand(cfg.n_latents).clone()
        out.set_display_stats(*self.display_stats())
        out.load_state_dict(state)
        return out.to(self.W_enc.device).train(self.training)

    # ------------------------------------------------------------ decoder constraints
    @torch.no_grad()
    def set_decoder_norm_to_unit(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder(self) -> None:
        """Project out the gradient component that would change decoder row norms."""
        if self.W_dec.grad is None:
            return
        g_FD, W_FD = self.W_dec.grad, self.W_dec
        # row-wise dot products as a batched matmul, then an in-place update: no F x D temporary
        parallel_F1 = torch.bmm(g_FD.unsqueeze(1), W_FD.unsqueeze(2)).view(-1, 1)
        g_FD.addcmul_(parallel_F1, W_FD, value=-1.0)


def local_error_variance(e_BD: Tensor) -> Tensor:
    """AuxK's normaliser: the variance of the residual error over this batch. Under data parallelism
    the trainer passes the *global* batch's instead (esmsae.sae.train), or each rank scales its AuxK
    gradient differently and the replicas drift from one process (1.1e-2 after 40 steps, vs 1.8e-7
    with the global value: shared/design/scale_out.md; sparsify #119)."""
    return (e_BD - e_BD.mean(0)).pow(2).sum(-1).mean()
