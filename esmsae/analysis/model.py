"""A protein LM with a per-residue ``embed`` (:class:`Model`, :func:`load_model`) and per-residue SAE
features of sequences (:func:`features`): what the Python API exports (:mod:`esmsae.api`), and what
the analyser, matching and the CLI use inside the package."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from esmsae.config import ModelConfig
from esmsae.core.fasta import clean_sequence
from esmsae.lm.plm import POOLS, Hook, ProteinLM, load_plm, pool_residues


class Model:
    """A protein LM with a per-residue ``embed``; ``.plm`` is the underlying :class:`ProteinLM`."""

    def __init__(self, plm: ProteinLM):
        self.plm = plm

    @property
    def n_layers(self) -> int:
        return self.plm.n_layers

    @property
    def d_model(self) -> int:
        return self.plm.d_model

    def embed(
        self, seqs: str | Sequence[str], layer: int, site: str = "resid", pool: str = "none"
    ) -> Tensor | list[Tensor]:
        """Activations at ``layer`` (esmsae convention: hidden_states index) for one sequence
        (``[L, d]``) or a list (a list of ``[L_i, d]``), BOS/EOS stripped. ``pool="mean"`` or
        ``"last"`` gives one ``[d]`` vector per protein (mean over residues, or the last
        residue's vector as esm-sae's per-protein SAEs use). Sequences are validated: a bad one
        raises :class:`~esmsae.core.fasta.SequenceError` naming it, its residue and position."""
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        one = isinstance(seqs, str)
        items = [seqs] if one else list(seqs)
        clean = [clean_sequence(s, record=f"sequence {i + 1}") for i, s in enumerate(items)]
        hook = Hook(int(layer), site)
        self.plm.check_hook(hook)
        out = [r[hook.name] for r in self.plm.embed(clean, [hook])]
        out = [pool_residues(t, pool) for t in out]
        return out[0] if one else out


def load_model(name: str, device: str = "auto", dtype: str = "float32", **kw) -> Model:
    """A protein LM by hub name (facebook/esm2_*), local Hugging Face folder, fair-esm ``.pt``,
    ``esmc_300m`` / ``esmc_600m`` or a local ESM C weights file."""
    return Model(load_plm(ModelConfig(name=name, device=device, dtype=dtype, **kw)))


def features(
    lm: Model, sae, seqs: str | Sequence[str], output: str = "dense", scale: str = "raw"
) -> Tensor | list[Tensor]:
    """Per-residue SAE features of sequences, run at the SAE's recorded layer and site.

    ``output``: ``dense`` ([L, F] per sequence) or ``sparse`` (a sparse COO [L, F]).
    ``scale``: ``raw``, ``max`` or ``max_idf`` (the SAE's reference display statistics)."""
    meta = getattr(sae, "meta", {}) or {}
    if meta.get("d_in", sae.d_in) != lm.d_model:
        raise ValueError(f"SAE d_in {sae.d_in} does not match {lm.plm.name} (hidden size {lm.d_model})")
    one = isinstance(seqs, str)
    acts = lm.embed([seqs] if one else list(seqs), layer=int(meta.get("layer", 0)), site=meta.get("site", "resid"),
                    pool=meta.get("pool", "none"))
    dev = next(sae.parameters()).device
    out = []
    for a in acts:
        a = a.to(dev).reshape(-1, sae.d_in)
        if scale != "raw":
            f = sae.encode_scaled(a, scale)
            out.append(f.to_sparse_coo() if output == "sparse" else f)
        else:
            out.append(sae.encode_sparse(a) if output == "sparse" else sae.encode_dense(a))
    return out[0] if one else out


__all__ = ["Model", "load_model", "features", "pool_residues"]
