"""``python -m esmsae import`` / ``export``: a published SAE written as an esmsae checkpoint folder,
and an esmsae checkpoint written as a SAELens or sparsify folder (normalisation folded in)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from esmsae.core.atomic import explain
from esmsae.published.canonical import PublishedFormatError, canonical_meta, to_sae
from esmsae.published.source import read_source
from esmsae.sae.checkpoint import load_checkpoint, save_sae


def import_sae(source: str, out: str | os.PathLike, fmt: str = "auto", **kw: Any) -> Path:
    """``python -m esmsae import``: write the source SAE as an esmsae checkpoint folder."""

    c = read_source(source, fmt, **kw)
    return save_sae(to_sae(c), out, canonical_meta(c))


def _folded_weights(sae) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """(W_enc [d, F], b_enc, W_dec [F, d], b_dec, per-token norm or 'none') for a consumer that
    subtracts b_dec from its (un-normalised) input: esmsae's dataset-wide normalisation
    xn = (x - m) * s is folded into the weights (W_enc * s, W_dec / s, b_dec / s + m)."""
    mode = sae.cfg.normalize
    W_enc = sae.W_enc.detach().float().T.clone()
    W_dec = sae.W_dec.detach().float().clone()
    b_enc, b_dec = sae.b_enc.detach().float().clone(), sae.b_dec.detach().float().clone()
    if mode in ("none", "scalar", "center", "center_scalar"):
        s, m = float(sae.norm_scale), sae.norm_mean.detach().float()
        return W_enc * s, b_enc, W_dec / s, b_dec / s + m, "none"
    return W_enc, b_enc, W_dec, b_dec, mode


def export_sae(folder: str | os.PathLike, out: str | os.PathLike, fmt: str) -> Path:
    """``python -m esmsae export``: write an esmsae checkpoint as a SAELens or sparsify folder."""
    sae = load_checkpoint(folder)
    W_enc, b_enc, W_dec, b_dec, norm = _folded_weights(sae)
    arch = sae.cfg.architecture
    d, Fn = W_enc.shape
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file: export writes a folder (choose a new name)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        return _export(sae, folder, out, tmp, fmt, W_enc, b_enc, W_dec, b_dec, norm, arch, d, Fn)
    except OSError as e:  # an unwritable place: the user's words, no scratch left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise explain(out, e, "the exported SAE") from None
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _export(sae, folder, out: Path, tmp: Path, fmt: str, W_enc, b_enc, W_dec, b_dec, norm, arch, d, Fn) -> Path:
    from safetensors.torch import save_file

    meta = sae.meta
    layer, site = meta.get("layer"), meta.get("site", "resid")
    model = meta.get("base_model", {}).get("name", "")
    if fmt == "saelens":
        sl_norm = {"none": "none", "layernorm_eps": "layer_norm", "unit_norm_sqrt_d": "constant_norm_rescale"}.get(norm)
        if sl_norm is None:
            raise PublishedFormatError(
                f"{folder}: normalisation {norm!r} has no SAELens equivalent (none, layernorm_eps, unit_norm_sqrt_d do)"
            )
        tensors = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
        sl_arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}[arch]
        if arch == "jumprelu":
            tensors["threshold"] = sae.threshold.detach().float()
        elif arch == "batchtopk":  # SAELens saves BatchTopK SAEs as JumpReLU with one shared threshold
            tensors["threshold"] = torch.full((Fn,), float(sae.threshold))
        cfg = {
            "d_in": d,
            "d_sae": Fn,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": sl_norm,
            "reshape_activations": "none",
            "architecture": sl_arch,
            "metadata": {
                "model_name": model,
                "hook_name": f"blocks.{layer - 1}.hook_resid_post" if site == "resid" and layer else f"L{layer}_{site}",
                "prepend_bos": True,
                "exclude_special_tokens": True,
                "esmsae_layer": layer,
                "esmsae_site": site,
                "esmsae_source": str(folder),
            },
        }
        if arch == "topk":
            cfg.update({"k": sae.cfg.k, "rescale_acts_by_decoder_norm": False})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "sae_weights.safetensors"))
        (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    elif fmt == "sparsify":
        if arch != "topk" or norm != "none":
            raise PublishedFormatError(
                f"{folder}: sparsify SAEs are TopK with no input normalisation; this SAE is {arch} with {norm!r}"
            )
        hook = f"encoder.layer.{layer - 1}" if site == "resid" and layer else f"L{layer}_{site}"
        sub = tmp / hook
        sub.mkdir()
        save_file(
            {"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec},
            str(sub / "sae.safetensors"),
        )
        cfg = {"activation": "topk", "expansion_factor": max(1, Fn // d), "normalize_decoder": True, "num_latents": Fn,
               "k": sae.cfg.k, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d}
        (sub / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps({"model": model, "hookpoints": [hook]}, indent=2) + "\n")
    else:
        raise PublishedFormatError(f"--format {fmt!r}: export writes saelens or sparsify")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
