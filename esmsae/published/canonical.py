"""esmsae's canonical form of a published SAE (:class:`Canonical`), the error every reader raises,
and the conversion to an esmsae :class:`~esmsae.sae.model.SAE` with its checkpoint metadata."""
from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from esmsae.config import SAEConfig
from esmsae.core.version import __version__
from esmsae.published.catalogue import KNOWN_MODELS


class PublishedFormatError(ValueError):
    """A published SAE cannot be imported; the message names the file, tensor or option."""


@dataclass
class Canonical:
    """One SAE in esmsae's canonical form (see the module docstring)."""

    fmt: str
    W_enc_DF: Tensor
    b_enc_F: Tensor
    W_dec_FD: Tensor
    b_dec_D: Tensor
    architecture: str  # topk | relu | jumprelu | batchtopk
    k: int = 0
    normalize: str = "none"
    norm_scale: float = 1.0  # "scalar" normalisation factor (SAELens expected_average_only_in)
    decode_denormalize: bool = True
    threshold: Tensor | None = None  # [F] for jumprelu, scalar for batchtopk
    display_max: Tensor | None = None
    display_idf: Tensor | None = None
    display_note: str = ""
    layer: int | None = None
    site: str = "resid"
    model: str = ""
    bos_eos: str = "not recorded by the source"
    pool: str = "none"  # per-protein SAEs: "last" / "mean" residue vector
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        self.W_enc_DF = _f32(self.W_enc_DF)
        self.W_dec_FD = _f32(self.W_dec_FD)
        self.b_enc_F = _f32(self.b_enc_F)
        self.b_dec_D = _f32(self.b_dec_D)
        d, Fn = self.W_enc_DF.shape
        for name, t, shape in (
            ("W_dec", self.W_dec_FD, (Fn, d)),
            ("b_enc", self.b_enc_F, (Fn,)),
            ("b_dec", self.b_dec_D, (d,)),
        ):
            if tuple(t.shape) != shape:
                raise PublishedFormatError(
                    f"{self.fmt}: tensor {name} has shape {tuple(t.shape)}, expected {shape} for W_enc"
                    f" {tuple(self.W_enc_DF.shape)} [d_in, latents]"
                )

    @property
    def d_in(self) -> int:
        return self.W_enc_DF.shape[0]

    @property
    def n_latents(self) -> int:
        return self.W_enc_DF.shape[1]


def _f32(t: Any) -> Tensor:
    return torch.as_tensor(np.asarray(t) if not isinstance(t, Tensor) else t).detach().to(torch.float32).contiguous()


def _fold_no_input_bias(W_enc_DF: Tensor, b_enc_F: Tensor, b_dec_D: Tensor) -> Tensor:
    """esmsae always encodes (x - b_dec) @ W_enc + b_enc; a source that does not subtract b_dec
    (SAELens apply_b_dec_to_input False, sparsify transcoders, Biohub's zero b_enc is not this)
    gets b_enc' = b_enc + b_dec @ W_enc, which gives the same pre-activations."""
    return b_enc_F + b_dec_D @ W_enc_DF


def _model_by_width(d: int, fmt: str) -> str:
    fam = "esmc" if fmt in ("esmc", "esm-sae") else "esm2"
    names = [n for n, (f, _, w) in KNOWN_MODELS.items() if f == fam and w == d and n != "esmc_6b"]
    return names[0] if len(names) == 1 else ""


def to_sae(c: Canonical):
    """The esmsae :class:`~esmsae.sae.model.SAE` computing exactly the source's features."""
    from esmsae.sae.model import SAE

    arch = c.architecture
    cfg = SAEConfig(architecture=arch, n_latents=c.n_latents, k=c.k if arch in ("topk", "batchtopk") else 0,
                    normalize=c.normalize, d_in=c.d_in, decode_denormalize=c.decode_denormalize, auxk_coef=0.0)
    sae = SAE(cfg, c.d_in, seed=None)
    with torch.no_grad():
        sae.W_enc.copy_(c.W_enc_DF.T)
        sae.W_dec.copy_(c.W_dec_FD)
        sae.b_enc.copy_(c.b_enc_F)
        sae.b_dec.copy_(c.b_dec_D)
        sae.norm_scale.fill_(c.norm_scale)
        if c.threshold is not None:
            sae.threshold.copy_(torch.as_tensor(c.threshold, dtype=torch.float32).reshape(sae.threshold.shape))
    sae.set_display_stats(c.display_max, c.display_idf)
    return sae.eval()


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical_meta(c: Canonical) -> dict[str, Any]:
    fam, n_layers, width = KNOWN_MODELS.get(c.model, ("esmc" if c.fmt in ("esmc", "esm-sae") else "auto", None, c.d_in))
    if c.model in KNOWN_MODELS and width is not None and width != c.d_in:
        raise PublishedFormatError(
            f"the SAE has d_in {c.d_in} but {c.model} has hidden size {width}; pass the right --model"
        )
    site = c.site
    return {
        "base_model": {"name": c.model, "family": fam, "n_layers": n_layers, "d_model": c.d_in},
        "layer": c.layer,
        "site": site,
        "hook": f"L{c.layer}_{site}",
        "bos_eos": c.bos_eos,
        "pool": c.pool,
        "display_stats": {"max": c.display_max is not None, "idf": c.display_idf is not None, "note": c.display_note},
        "provenance": {
            "source": c.source,
            "format": c.fmt,
            "files": [
                {"name": p.name, "sha256": _sha256(p), "bytes": p.stat().st_size} for p in c.files if p.is_file()
            ],
            "imported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "imported_by": f"esmsae {__version__}",
            "notes": c.notes,
        },
    }
