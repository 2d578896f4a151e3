"""SAELens ``cfg.json`` + ``sae_weights.safetensors`` (standard, topk, jumprelu); SAELens hook names
``blocks.i.hook_resid_post`` are esmsae layer i + 1."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from esmsae.published.canonical import Canonical, PublishedFormatError, _fold_no_input_bias

_SAELENS_NORM = {"none": "none", "layer_norm": "layernorm_eps", "constant_norm_rescale": "unit_norm_sqrt_d",
                 "expected_average_only_in": "scalar", False: "none", True: "scalar", None: "none"}


def _hook_to_layer(hook: str) -> tuple[int | None, str]:
    """A source's hook / hookpoint name -> (esmsae layer, site)."""
    site = "mlp" if re.search(r"mlp", hook) else "attn" if re.search(r"attn", hook) else "resid"
    for pat, off in ((r"blocks\.(\d+)\.hook_resid_pre", 0), (r"blocks\.(\d+)\.hook_(?:resid_post|mlp_out|attn_out)", 1),
                     (r"(?:^|\.)layers?\.(\d+)(?:\.|$)", 1), (r"hidden_states\.?\[?(\d+)", 0)):
        m = re.search(pat, hook)
        if m:
            return int(m.group(1)) + off, site
    if re.search(r"embed", hook):
        return 0, "resid"
    return None, site


def read(folder: Path, opts: dict) -> Canonical:
    from safetensors.torch import load_file

    cfg = json.loads((folder / "cfg.json").read_text())
    sd = load_file(str(folder / "sae_weights.safetensors"))
    meta = cfg.get("metadata", {}) or {}
    arch = cfg.get("architecture") or {"relu": "standard", "topk": "topk"}.get(
        cfg.get("activation_fn_str", "relu"), "standard"
    )
    k = int(cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 0)
    W_enc, W_dec, b_dec = sd["W_enc"].float(), sd["W_dec"].float(), sd["b_dec"].float()
    b_enc = sd.get("b_enc", torch.zeros(W_enc.shape[1])).float()
    if arch not in ("standard", "topk", "jumprelu"):
        raise PublishedFormatError(
            f"{folder / 'cfg.json'}: SAELens architecture {arch!r} is not supported (standard, topk, jumprelu are)"
        )
    files = [folder / "cfg.json", folder / "sae_weights.safetensors"]
    notes = []
    if not cfg.get("apply_b_dec_to_input", True):
        b_enc = _fold_no_input_bias(W_enc, b_enc, b_dec)
        notes.append("apply_b_dec_to_input False: folded into b_enc (b_enc + b_dec @ W_enc)")
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # features are pre-activations x |W_dec row|: fold the norm into the encoder, divide it out of the decoder
        n_F = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * n_F, b_enc * n_F, W_dec / n_F.clamp_min(1e-12)[:, None]
        notes.append("rescale_acts_by_decoder_norm: decoder norms folded into the encoder")
    norm_key = cfg.get("normalize_activations", "none")
    if norm_key not in _SAELENS_NORM:
        raise PublishedFormatError(f"{folder / 'cfg.json'}: normalize_activations {norm_key!r} is not supported")
    normalize, scale = _SAELENS_NORM[norm_key], 1.0
    if normalize == "scalar":
        sp = folder / "activation_scaler.json"
        if not sp.exists():
            raise PublishedFormatError(
                f"{folder}: normalize_activations {norm_key!r} needs its scaling factor (activation_scaler.json), "
                "which SAELens writes only into training checkpoints; the inference SAE has it folded in"
            )
        scale = float(json.loads(sp.read_text())["scaling_factor"])
        files.append(sp)
    c = Canonical(
        "saelens",
        W_enc,
        b_enc,
        W_dec,
        b_dec,
        {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}[arch],
        k=k,
        normalize=normalize,
        norm_scale=scale,
        threshold=sd.get("threshold"),
        files=files,
        notes=notes,
        model=str(meta.get("model_name") or cfg.get("model_name") or ""),
    )
    hook = str(meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or "")
    if meta.get("esmsae_layer") is not None:  # written by esmsae's own export
        c.layer, c.site = int(meta["esmsae_layer"]), str(meta.get("esmsae_site", "resid"))
    elif hook:
        c.layer, c.site = _hook_to_layer(hook)
        c.notes.append(f"SAELens hook {hook!r}")
    bos = meta.get("exclude_special_tokens", meta.get("prepend_bos"))
    c.bos_eos = (
        f"SAELens metadata: prepend_bos={meta.get('prepend_bos')},"
        f" exclude_special_tokens={meta.get('exclude_special_tokens')}"
        if bos is not None
        else c.bos_eos
    )
    return c
