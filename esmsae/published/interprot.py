"""InterProt ``esm2_plm{d}_l{L}_sae{F}*.safetensors``: per-token layer norm, TopK (k not stored)."""
from __future__ import annotations

import re
from pathlib import Path

from esmsae.published.canonical import Canonical, PublishedFormatError

_INTERPROT_NAME = re.compile(r"plm(\d+).*?l(\d+).*?sae(\d+)")


def read(path: Path, opts: dict) -> Canonical:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    need = {"w_enc", "w_dec", "b_enc", "b_pre"}
    if not need <= set(sd):
        raise PublishedFormatError(f"{path}: not an InterProt SAE (needs tensors {sorted(need)}, has {sorted(sd)})")
    k = opts.get("k")
    if not k:
        raise PublishedFormatError(
            f"{path.name}: InterProt files do not store k; pass --k (64 for the layer-sweep files "
            "esm2_plm1280_l*_sae4096.safetensors, 128 for esm2_plm1280_l24_sae4096_100k.safetensors)"
        )
    c = Canonical(
        "interprot",
        sd["w_enc"],
        sd["b_enc"],
        sd["w_dec"],
        sd["b_pre"],
        "topk",
        k=int(k),
        normalize="layernorm_eps",
        bos_eos=(
            "included in training and encode (BOS/EOS rows dropped after encoding); the per-token "
            "normalisation makes residue features independent of them"
        ),
        files=[path],
    )
    m = _INTERPROT_NAME.search(path.name)
    if m:
        d, layer, Fn = map(int, m.groups())
        if (d, Fn) != (c.d_in, c.n_latents):
            raise PublishedFormatError(
                f"{path.name}: the name says d {d} and {Fn} latents, the tensors have {c.d_in} and {c.n_latents}"
            )
        c.layer = layer
    c.notes.append("InterProt's feature pages used Hugging Face EsmModel activations (with the 0.88 token-dropout "
                   "rescale, as esmsae); its steering/inference endpoints used fair-esm without it")
    return c
