"""EleutherAI sparsify ``cfg.json`` + ``sae.safetensors`` (ReLU then TopK); ``encoder.layer.i`` is
esmsae layer i + 1."""
from __future__ import annotations

import json
from pathlib import Path

from esmsae.published.canonical import Canonical, PublishedFormatError, _fold_no_input_bias
from esmsae.published.saelens import _hook_to_layer


def read(folder: Path, opts: dict) -> Canonical:
    from safetensors.torch import load_file

    cfg = json.loads((folder / "cfg.json").read_text())
    sd = load_file(str(folder / "sae.safetensors"))
    if cfg.get("activation", "topk") != "topk":
        raise PublishedFormatError(
            f"{folder / 'cfg.json'}: sparsify activation {cfg.get('activation')!r} is not supported (topk is)"
        )
    if cfg.get("skip_connection") or "W_skip" in sd:
        raise PublishedFormatError(
            f"{folder}: sparsify skip connections (W_skip) are not supported: esmsae's decoder has none"
        )
    W_enc = sd["encoder.weight"].float().T
    b_enc, W_dec, b_dec = sd["encoder.bias"].float(), sd["W_dec"].float(), sd["b_dec"].float()
    notes = []
    if cfg.get("transcode"):
        b_enc = _fold_no_input_bias(W_enc, b_enc, b_dec)
        notes.append(
            "transcoder: the input is not centred by b_dec (folded into b_enc); its reconstruction targets another site"
        )
    c = Canonical(
        "sparsify",
        W_enc,
        b_enc,
        W_dec,
        b_dec,
        "topk",
        k=int(cfg["k"]),
        files=[folder / "cfg.json", folder / "sae.safetensors"],
        notes=notes,
    )
    c.layer, c.site = _hook_to_layer(folder.name)
    run = folder.parent / "config.json"
    if run.exists():
        c.model = str(json.loads(run.read_text()).get("model", "") or "")
        c.files.append(run)
    return c
