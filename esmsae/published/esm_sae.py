"""esm-sae Flax parameters saved as ``.npy`` (``pb_D``, ``enc/kernel``, ``lb_L``, ``dec/kernel``)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from esmsae.published.canonical import Canonical, PublishedFormatError


def read(path: Path, opts: dict) -> Canonical:
    obj = np.load(path, allow_pickle=True)
    p = obj.item() if obj.dtype == object and obj.shape == () else None
    if not isinstance(p, dict):
        raise PublishedFormatError(f"{path}: not an esm-sae parameter file (np.save of a Flax params dict)")
    p = p.get("params", p)
    try:
        pb, enc, lb = np.asarray(p["pb_D"]), np.asarray(p["enc"]["kernel"]), np.asarray(p["lb_L"])
    except (KeyError, TypeError) as e:
        raise PublishedFormatError(f"{path}: esm-sae params need pb_D, enc/kernel and lb_L (missing {e})") from None
    dec = np.asarray(p["dec"]["kernel"]) if "dec" in p else enc.T  # tied=True: decoder is enc.kernel.T
    k = opts.get("k")
    if k is None:
        m = re.search(r"_k(\d+)", str(path.parent.name) + "_" + path.stem)
        k = int(m.group(1)) if m else None
    if k is None:
        raise PublishedFormatError(
            f"{path}: esm-sae files do not store k; pass --k (the run folder name L3840_k32 means k 32; --k 0 for plain"
            " ReLU)"
        )
    if not opts.get("model"):
        raise PublishedFormatError(
            f"{path}: esm-sae files do not store the base model; pass --model (esm-sae's default is esmc_300m)"
        )
    norm = {"none": "none", "layernorm": "layernorm_biased_eps"}[opts.get("input_norm") or "none"]
    c = Canonical(
        "esm-sae",
        enc,
        lb,
        dec,
        pb,
        "topk" if k else "relu",
        k=int(k),
        normalize=norm,
        files=[path],
        pool="last",
        bos_eos="per-protein: esm-sae embeds the last residue's vector of the final (post-norm) layer",
    )
    c.notes.append("esm-sae is a per-protein SAE on ESM C's final post-norm output at the last residue "
                   "(use `esmsae embed --pool last`); its metadata has no k, model or normalisation flag")
    return c
