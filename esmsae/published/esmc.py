"""Biohub ESM C SAEs: ``config.json`` + ``layer_{N}.safetensors`` (z-score, ReLU-TopK, no b_enc,
shipped max / IDF display statistics)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from esmsae.published.canonical import Canonical, PublishedFormatError


def read(folder: Path, opts: dict) -> Canonical:
    from safetensors.torch import load_file

    cfgp = folder / "config.json"
    if not cfgp.exists():
        raise PublishedFormatError(f"{folder}: a Biohub ESM C SAE repo needs config.json")
    cfg = json.loads(cfgp.read_text())
    layers = [int(x) for x in cfg.get("available_layers", [])]
    files = {
        int(m.group(1)): p
        for p in folder.glob("layer_*.safetensors")
        if (m := re.match(r"layer_(\d+)\.safetensors$", p.name))
    }
    layer = opts.get("layer")
    if layer is None:
        cands = sorted(set(layers) & set(files)) or sorted(files)
        if len(cands) != 1:
            raise PublishedFormatError(f"{folder}: several layers {layers or sorted(files)}; pass --layer N")
        layer = cands[0]
    if layer not in files:
        raise PublishedFormatError(
            f"{folder}: no layer_{layer}.safetensors (available layers: {layers or sorted(files)})"
        )
    sd = load_file(str(files[layer]))
    need = {"W_enc", "W_dec", "b_dec"}
    if not need <= set(sd):
        raise PublishedFormatError(
            f"{files[layer]}: not a Biohub ESM C SAE layer (needs {sorted(need)}, has {sorted(sd)})"
        )
    k = int(cfg.get("k") or opts.get("k") or 0)
    if not k:
        raise PublishedFormatError(f"{cfgp}: no k in config.json; pass --k")
    Fn = sd["W_enc"].shape[1]
    c = Canonical(
        "esmc",
        sd["W_enc"],
        torch.zeros(Fn),
        sd["W_dec"],
        sd["b_dec"],
        "topk",
        k=k,
        normalize="layernorm_eps",
        decode_denormalize=False,
        layer=layer,
        files=[cfgp, files[layer]],
        bos_eos="included (Biohub encodes every non-padding token; esmsae drops the BOS/EOS rows)",
    )
    name = opts.get("source_name", folder.name)
    update = bool(cfg.get("use_residual_update_instead_of_states")) or "-mlp-" in name.lower()
    if update:
        # trained on h[N] - h[N-1]; esmsae's hooks read states, not updates
        c.site = "resid_update"
        c.notes.append(
            "residual-update SAE (h[N] - h[N-1]; the '-mlp-' repos carry no flag, so it is set from the name): "
            "imported and encodable, but esmsae has no residual-update hook to run it on a model"
        )
    mx, idf = sd.get("max"), sd.get("idf")
    if mx is not None or idf is not None:
        c.display_max, c.display_idf = mx, idf
        trivial = (mx is None or torch.all(mx == 1)) and (idf is None or torch.all(idf == 1))
        c.display_note = (
            "Biohub's shipped max / idf are all ones (as the 300M shards): no reference scaling"
            if trivial
            else "Biohub's shipped per-feature max and IDF (features / max x idf is their 'TF-IDF' scale)"
        )
    if cfg.get("d_model") and int(cfg["d_model"]) != c.d_in:
        raise PublishedFormatError(f"{cfgp}: d_model {cfg['d_model']} but layer_{layer}.safetensors has width {c.d_in}")
    m = re.search(r"esmc-(\d+[mb])", name, re.I)
    if m:
        c.model = f"esmc_{m.group(1).lower()}"
    return c
