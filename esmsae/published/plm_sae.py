"""plm-sae ``PyTorchModelHubMixin`` folders: ``config.json {"cfg": ...}`` + weights (ReLU + L1)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from esmsae.published.canonical import Canonical, PublishedFormatError


def read(folder: Path, opts: dict) -> Canonical:
    cfgp = folder / "config.json"
    cfg = json.loads(cfgp.read_text()) if cfgp.exists() else {}
    cfg = cfg.get("cfg", cfg)
    wp = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()), None)
    if wp is None:
        raise PublishedFormatError(f"{folder}: a plm-sae folder needs model.safetensors or pytorch_model.bin")
    if wp.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(wp))
    else:
        sd = torch.load(wp, map_location="cpu", weights_only=True)
    need = {"W_enc", "W_dec", "b_enc", "b_dec"}
    if not need <= set(sd):
        raise PublishedFormatError(f"{wp}: not a plm-sae AutoEncoder (needs {sorted(need)}, has {sorted(sd)})")
    c = Canonical(
        "plm-sae",
        sd["W_enc"],
        sd["b_enc"],
        sd["W_dec"],
        sd["b_dec"],
        "relu",
        files=[p for p in (cfgp, wp) if p.exists()],
        bos_eos="included (plm-sae's inference encodes <cls> and <eos> rows too; esmsae drops them)",
    )
    if cfg.get("act_size") and int(cfg["act_size"]) != c.d_in:
        raise PublishedFormatError(f"{cfgp}: act_size {cfg['act_size']} but the weights have width {c.d_in}")
    # plm-sae hooks model.esm.encoder.layer[i].output: the output of block i + 1 (esmsae layer i + 1)
    idx = cfg.get("layer")
    if idx is None:
        m = re.search(r"_l(\d+)(?:$|_)", opts.get("source_name", folder.name))
        idx = int(m.group(1)) if m else None
    if idx is not None:
        c.layer = int(idx) + 1
        c.notes.append(f"plm-sae layer index {idx} (esm.encoder.layer.{idx}.output) is esmsae layer {c.layer}")
    name = str(cfg.get("model_name", "")) + " " + opts.get("source_name", "")
    if re.search(r"esm2_(t?6)(_|$)", name):
        c.model = "facebook/esm2_t6_8M_UR50D"
    return c
