"""InterPLM ``layer_{L}/ae_{normalized,unnormalized}.pt``: ReLU with a pre-encoder bias."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from esmsae.published.canonical import Canonical, PublishedFormatError


def read(path: Path, opts: dict) -> Canonical:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    need = {"bias", "encoder.weight", "encoder.bias", "decoder.weight"}
    if not need <= set(sd):
        raise PublishedFormatError(
            f"{path}: not an InterPLM ReLU SAE state dict (needs {sorted(need)}, has {sorted(sd)[:8]})"
        )
    c = Canonical("interplm", sd["encoder.weight"].T, sd["encoder.bias"], sd["decoder.weight"].T, sd["bias"], "relu",
                  bos_eos="excluded (InterPLM drops BOS/EOS when embedding)", files=[path])
    m = re.search(r"layer_(\d+)", str(path))
    c.layer = int(m.group(1)) if m else None
    if "ae_normalized" in path.name:
        c.notes.append("ae_normalized: InterPLM folded its per-feature max into the weights, so features are already "
                       "activation / max (about 1 at the max over InterPLM's embedding shard)")
        c.display_max = torch.ones(c.n_latents)
        c.display_note = "features are already divided by InterPLM's per-feature max (ae_normalized)"
        other = path.with_name("ae_unnormalized.pt")
    else:
        other = path.with_name("ae_normalized.pt")
    if "ae_unnormalized" in path.name and other.exists():
        # max_j = |dec_norm[:, j]| / |dec_unnorm[:, j]| (the normalized file has decoder.weight * max)
        n = torch.load(other, map_location="cpu", weights_only=True)
        ratio = n["decoder.weight"].float().norm(dim=0) / sd["decoder.weight"].float().norm(dim=0)
        c.display_max = torch.nan_to_num(ratio, nan=0.0, posinf=0.0)
        c.display_note = "per-feature max recovered from InterPLM's ae_normalized.pt (decoder column norm ratio)"
    fac = sd.get("activation_rescale_factor")
    if fac is not None and not torch.all(fac == 1):
        c.notes.append(
            "InterPLM v1 activation_rescale_factor present: raw features are imported; the factor is not applied"
        )
    return c
