"""Published protein SAEs as esmsae checkpoints: ``python -m esmsae import`` / ``export``.

Each reader turns one source's own on-disk layout into one canonical form (encoder
``W_enc [d, F]``, ``b_enc [F]``, decoder ``W_dec [F, d]``, ``b_dec [d]`` subtracted from the
normalised input, an input normalisation, an activation and its k / thresholds) plus what
esmsae needs to run it: base model, layer in esmsae's convention, hook site, BOS/EOS policy
and shipped display statistics. Formats (``../shared/design/published_sae_formats.md`` has
the sources, commits and file layouts each reader follows):

=========  ==========================================================================
interplm   InterPLM ``layer_{L}/ae_{normalized,unnormalized}.pt`` (ReLU, pre-encoder bias)
interprot  InterProt ``esm2_plm{d}_l{L}_sae{F}*.safetensors`` (per-token LN, TopK; k not stored)
esmc       Biohub ESM C SAEs: ``config.json`` + ``layer_{N}.safetensors`` (z-score, ReLU-TopK, no b_enc)
plm-sae    plm-sae ``PyTorchModelHubMixin`` folder: ``config.json {"cfg": ...}`` + weights (ReLU)
esm-sae    esm-sae Flax params ``.npy`` (``pb_D``, ``enc/kernel``, ``lb_L``, ``dec/kernel``)
saelens    SAELens ``cfg.json`` + ``sae_weights.safetensors`` (standard, topk, jumprelu)
sparsify   EleutherAI sparsify ``cfg.json`` + ``sae.safetensors`` (ReLU then TopK)
esmsae     an esmsae checkpoint folder (``sae.safetensors`` + ``cfg.json``)
=========  ==========================================================================

Layers are always esmsae's (= Hugging Face ``hidden_states``) convention: layer L of the
residual stream is the output of block L, layer n_layers includes the final norm. InterPLM,
InterProt and Biohub already use it; plm-sae's hook ``esm.encoder.layer.3.output`` is layer 4;
sparsify's ``encoder.layer.i`` and SAELens' ``blocks.i.hook_resid_post`` are layer i + 1.

Import needs no model weights: the base model is recorded and checked when the SAE is used.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from . import __version__
from .config import SAEConfig

FORMATS = ("interplm", "interprot", "esmc", "plm-sae", "esm-sae", "saelens", "sparsify", "esmsae")

# Protein LMs esmsae knows by name: family, blocks, width.
KNOWN_MODELS: dict[str, tuple[str, int | None, int | None]] = {
    "facebook/esm2_t6_8M_UR50D": ("esm2", 6, 320),
    "facebook/esm2_t12_35M_UR50D": ("esm2", 12, 480),
    "facebook/esm2_t30_150M_UR50D": ("esm2", 30, 640),
    "facebook/esm2_t33_650M_UR50D": ("esm2", 33, 1280),
    "facebook/esm2_t36_3B_UR50D": ("esm2", 36, 2560),
    "esmc_300m": ("esmc", 30, 960),
    "esmc_600m": ("esmc", 36, 1152),
    "esmc_6b": ("esmc", None, None),  # served by the Forge API only; recorded, not loadable here
    "unirep1900": ("unirep", 1, 1900),
    "unirep256": ("unirep", 4, 256),
    "unirep64": ("unirep", 4, 64),
}

# The known releases, for the app's import tab and for format detection of hub ids.
CATALOGUE: list[dict[str, Any]] = [
    {
        "source": "Elana/InterPLM-esm2-8m",
        "format": "interplm",
        "layers": [1, 2, 3, 4, 5, 6],
        "k": None,
        "model": "facebook/esm2_t6_8M_UR50D",
        "what": "InterPLM, ESM-2 8M, 10,240 latents per layer, ReLU (features / max)",
    },
    {
        "source": "Elana/InterPLM-esm2-650m",
        "format": "interplm",
        "layers": [1, 9, 18, 24, 30, 33],
        "k": None,
        "model": "facebook/esm2_t33_650M_UR50D",
        "what": "InterPLM, ESM-2 650M, 10,240 latents per layer, ReLU (features / max)",
    },
    {
        "source": "liambai/InterProt-ESM2-SAEs",
        "format": "interprot",
        "layers": [4, 8, 12, 16, 20, 24, 28, 32, 33],
        "k": 64,
        "model": "facebook/esm2_t33_650M_UR50D",
        "what": "InterProt layer sweep, ESM-2 650M, 4,096 latents, TopK k 64 (k inferred from InterProt's viz config)",
    },
    {
        "source": "liambai/InterProt-ESM2-SAEs",
        "format": "interprot",
        "layers": [24],
        "k": 128,
        "file": "esm2_plm1280_l24_sae4096_100k.safetensors",
        "model": "facebook/esm2_t33_650M_UR50D",
        "what": "InterProt 100k-sequence SAE, ESM-2 650M layer 24, 4,096 latents, k 128",
    },
    {
        "source": "biohub/ESMC-600M-sae-layer27-k64-codebook16384",
        "format": "esmc",
        "layers": [27],
        "k": None,
        "model": "esmc_600m",
        "what": "Biohub ESM C 600M SAE, layer 27, 16,384 latents, k 64, ships max / IDF",
    },
    {
        "source": "biohub/ESMC-300M-sae-mlp-k64-codebook131072",
        "format": "esmc",
        "layers": [],
        "k": None,
        "model": "esmc_300m",
        "what": "Biohub ESM C 300M residual-update SAE, 131,072 latents (imported; not runnable: residual-update hook)",
    },
    {
        "source": "Biohub/ESMC-6B-sae-k64-codebook16384",
        "format": "esmc",
        "layers": [30, 60],
        "k": None,
        "model": "esmc_6b",
        "what": "Biohub ESM C 6B SAEs (the 6B model is Forge-only: imported, not runnable here)",
    },
    {
        "source": "evillegasgarcia/sae_esm2_6_l3",
        "format": "plm-sae",
        "layers": [4],
        "k": None,
        "model": "facebook/esm2_t6_8M_UR50D",
        "what": "plm-sae, ESM-2 8M block 4 output (their layer index 3), ReLU + L1",
    },
]

_HUB_FORMATS = [
    (re.compile(r"^elana/interplm", re.I), "interplm"),
    (re.compile(r"^liambai/interprot", re.I), "interprot"),
    (re.compile(r"^biohub/esmc-.*sae", re.I), "esmc"),
    (re.compile(r"^evillegasgarcia/sae_esm2", re.I), "plm-sae"),
]


class ImportError_(ValueError):
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
                raise ImportError_(
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


# ====================================================================== readers
def _read_interplm(path: Path, opts: dict) -> Canonical:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    need = {"bias", "encoder.weight", "encoder.bias", "decoder.weight"}
    if not need <= set(sd):
        raise ImportError_(f"{path}: not an InterPLM ReLU SAE state dict (needs {sorted(need)}, has {sorted(sd)[:8]})")
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


_INTERPROT_NAME = re.compile(r"plm(\d+).*?l(\d+).*?sae(\d+)")


def _read_interprot(path: Path, opts: dict) -> Canonical:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    need = {"w_enc", "w_dec", "b_enc", "b_pre"}
    if not need <= set(sd):
        raise ImportError_(f"{path}: not an InterProt SAE (needs tensors {sorted(need)}, has {sorted(sd)})")
    k = opts.get("k")
    if not k:
        raise ImportError_(f"{path.name}: InterProt files do not store k; pass --k (64 for the layer-sweep files "
                           "esm2_plm1280_l*_sae4096.safetensors, 128 for esm2_plm1280_l24_sae4096_100k.safetensors)")
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
            raise ImportError_(
                f"{path.name}: the name says d {d} and {Fn} latents, the tensors have {c.d_in} and {c.n_latents}"
            )
        c.layer = layer
    c.notes.append("InterProt's feature pages used Hugging Face EsmModel activations (with the 0.88 token-dropout "
                   "rescale, as esmsae); its steering/inference endpoints used fair-esm without it")
    return c


def _read_esmc(folder: Path, opts: dict) -> Canonical:
    from safetensors.torch import load_file

    cfgp = folder / "config.json"
    if not cfgp.exists():
        raise ImportError_(f"{folder}: a Biohub ESM C SAE repo needs config.json")
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
            raise ImportError_(f"{folder}: several layers {layers or sorted(files)}; pass --layer N")
        layer = cands[0]
    if layer not in files:
        raise ImportError_(f"{folder}: no layer_{layer}.safetensors (available layers: {layers or sorted(files)})")
    sd = load_file(str(files[layer]))
    need = {"W_enc", "W_dec", "b_dec"}
    if not need <= set(sd):
        raise ImportError_(f"{files[layer]}: not a Biohub ESM C SAE layer (needs {sorted(need)}, has {sorted(sd)})")
    k = int(cfg.get("k") or opts.get("k") or 0)
    if not k:
        raise ImportError_(f"{cfgp}: no k in config.json; pass --k")
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
        raise ImportError_(f"{cfgp}: d_model {cfg['d_model']} but layer_{layer}.safetensors has width {c.d_in}")
    m = re.search(r"esmc-(\d+[mb])", name, re.I)
    if m:
        c.model = f"esmc_{m.group(1).lower()}"
    return c


def _read_plm_sae(folder: Path, opts: dict) -> Canonical:
    cfgp = folder / "config.json"
    cfg = json.loads(cfgp.read_text()) if cfgp.exists() else {}
    cfg = cfg.get("cfg", cfg)
    wp = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()), None)
    if wp is None:
        raise ImportError_(f"{folder}: a plm-sae folder needs model.safetensors or pytorch_model.bin")
    if wp.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(wp))
    else:
        sd = torch.load(wp, map_location="cpu", weights_only=True)
    need = {"W_enc", "W_dec", "b_enc", "b_dec"}
    if not need <= set(sd):
        raise ImportError_(f"{wp}: not a plm-sae AutoEncoder (needs {sorted(need)}, has {sorted(sd)})")
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
        raise ImportError_(f"{cfgp}: act_size {cfg['act_size']} but the weights have width {c.d_in}")
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


def _read_esm_sae(path: Path, opts: dict) -> Canonical:
    obj = np.load(path, allow_pickle=True)
    p = obj.item() if obj.dtype == object and obj.shape == () else None
    if not isinstance(p, dict):
        raise ImportError_(f"{path}: not an esm-sae parameter file (np.save of a Flax params dict)")
    p = p.get("params", p)
    try:
        pb, enc, lb = np.asarray(p["pb_D"]), np.asarray(p["enc"]["kernel"]), np.asarray(p["lb_L"])
    except (KeyError, TypeError) as e:
        raise ImportError_(f"{path}: esm-sae params need pb_D, enc/kernel and lb_L (missing {e})") from None
    dec = np.asarray(p["dec"]["kernel"]) if "dec" in p else enc.T  # tied=True: decoder is enc.kernel.T
    k = opts.get("k")
    if k is None:
        m = re.search(r"_k(\d+)", str(path.parent.name) + "_" + path.stem)
        k = int(m.group(1)) if m else None
    if k is None:
        raise ImportError_(
            f"{path}: esm-sae files do not store k; pass --k (the run folder name L3840_k32 means k 32; --k 0 for plain"
            " ReLU)"
        )
    if not opts.get("model"):
        raise ImportError_(
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


def _read_saelens(folder: Path, opts: dict) -> Canonical:
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
        raise ImportError_(
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
        raise ImportError_(f"{folder / 'cfg.json'}: normalize_activations {norm_key!r} is not supported")
    normalize, scale = _SAELENS_NORM[norm_key], 1.0
    if normalize == "scalar":
        sp = folder / "activation_scaler.json"
        if not sp.exists():
            raise ImportError_(
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


def _read_sparsify(folder: Path, opts: dict) -> Canonical:
    from safetensors.torch import load_file

    cfg = json.loads((folder / "cfg.json").read_text())
    sd = load_file(str(folder / "sae.safetensors"))
    if cfg.get("activation", "topk") != "topk":
        raise ImportError_(
            f"{folder / 'cfg.json'}: sparsify activation {cfg.get('activation')!r} is not supported (topk is)"
        )
    if cfg.get("skip_connection") or "W_skip" in sd:
        raise ImportError_(f"{folder}: sparsify skip connections (W_skip) are not supported: esmsae's decoder has none")
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


READERS: dict[str, Callable[[Path, dict], Canonical]] = {
    "interplm": _read_interplm, "interprot": _read_interprot, "esmc": _read_esmc, "plm-sae": _read_plm_sae,
    "esm-sae": _read_esm_sae, "saelens": _read_saelens, "sparsify": _read_sparsify,
}


# ====================================================================== detection + hub
def detect_format(path: Path) -> str:
    """The format of a local file or folder, from its file names and tensor names."""
    if path.is_file():
        if path.suffix == ".npy":
            return "esm-sae"
        if path.suffix in (".pt", ".pth"):
            return "interplm"
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), "pt") as f:
                keys = set(f.keys())
            if {"w_enc", "b_pre"} <= keys:
                return "interprot"
            if (
                path.name == "sae.safetensors"
                or re.match(r"layer_\d+\.safetensors$", path.name)
                or path.name == "sae_weights.safetensors"
            ):
                return detect_format(path.parent)
        raise ImportError_(
            f"{path}: cannot tell which published SAE format this file is; pass --format ({', '.join(FORMATS)})"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if (path / "sae.safetensors").exists() and (path / "cfg.json").exists():
        cfg = json.loads((path / "cfg.json").read_text())
        return "esmsae" if "esmsae_version" in cfg else "sparsify"
    if (path / "sae_weights.safetensors").exists():
        return "saelens"
    cfgp = path / "config.json"
    if cfgp.exists():
        cfg = json.loads(cfgp.read_text())
        if cfg.get("model_type") == "esmc_sae" or any(path.glob("layer_*.safetensors")):
            return "esmc"
        if "cfg" in cfg or "act_size" in cfg:
            return "plm-sae"
    subs = sorted(p.parent for p in path.glob("*/sae.safetensors") if (p.parent / "cfg.json").exists())
    if subs:  # a sparsify run folder: one subfolder per hookpoint
        return detect_format(subs[0])
    if any(path.glob("*/sae_weights.safetensors")):  # a SAELens release folder: one subfolder per SAE id
        return "saelens"
    if any(path.glob("layer_*/ae_*.pt")) or any(path.glob("ae_*.pt")):
        return "interplm"
    if any(path.glob("esm2_plm*_sae*.safetensors")):
        return "interprot"
    raise ImportError_(
        f"{path}: no known SAE layout found (looked for cfg.json + sae.safetensors, sae_weights.safetensors, "
        "config.json + layer_N.safetensors, layer_N/ae_*.pt, esm2_plm*_sae*.safetensors); pass --format"
    )


def _pick_file(folder: Path, fmt: str, opts: dict) -> Path:
    """Inside a folder or hub snapshot, the file (or subfolder) of the wanted layer."""
    if opts.get("file"):
        p = folder / opts["file"]
        if not p.exists():
            raise ImportError_(f"{folder}: no {opts['file']}")
        return p
    layer = opts.get("layer")
    if fmt == "interplm":
        if layer is None:
            found = sorted(folder.glob("layer_*/ae_normalized.pt"))
            if len(found) != 1:
                raise ImportError_(
                    f"{folder}: pass --layer N (InterPLM ships one SAE per layer: {[p.parent.name for p in found]})"
                )
            return found[0]
        for name in ("ae_normalized.pt", "ae_unnormalized.pt"):
            if (folder / f"layer_{layer}" / name).exists():
                return folder / f"layer_{layer}" / name
        raise ImportError_(f"{folder}: no layer_{layer}/ae_normalized.pt")
    if fmt == "interprot":
        found = sorted(p for p in folder.glob("esm2_plm*_sae*.safetensors") if layer is None or
                       ((m := _INTERPROT_NAME.search(p.name)) and int(m.group(2)) == layer))
        plain = [p for p in found if "_100k" not in p.name]
        found = plain or found
        if len(found) != 1:
            raise ImportError_(
                f"{folder}: {'pass --layer N or --file NAME' if found else 'no InterProt file for layer ' + str(layer)}"
                f" ({[p.name for p in found]})"
            )
        return found[0]
    if fmt in ("saelens", "sparsify"):
        mark = "sae_weights.safetensors" if fmt == "saelens" else "sae.safetensors"
        found = sorted({p.parent for p in folder.rglob(mark)})
        if layer is not None:
            found = [p for p in found if _hook_to_layer(p.name)[0] == layer] or found
        if len(found) != 1:
            raise ImportError_(
                f"{folder}: several SAEs {[str(p.relative_to(folder)) for p in found]}; pass --file SUBFOLDER"
            )
        return found[0]
    return folder


def hub_format(repo_id: str) -> str | None:
    return next((fmt for pat, fmt in _HUB_FORMATS if pat.search(repo_id)), None)


def fetch_hub(repo_id: str, fmt: str | None, opts: dict) -> Path:
    """Download (or find in the Hugging Face cache; ``HF_HUB_OFFLINE=1`` works) only the files
    the wanted SAE needs, through huggingface_hub's own hf_hub_download / snapshot_download."""
    from huggingface_hub import hf_hub_download, snapshot_download

    layer, file = opts.get("layer"), opts.get("file")
    try:
        if file:
            pats = [file, f"{file}/*", "config.json", "cfg.json"]
        elif fmt == "interplm":
            if layer is None:
                raise ImportError_(f"{repo_id}: InterPLM ships one SAE per layer; pass --layer N")
            return Path(hf_hub_download(repo_id, f"layer_{layer}/ae_normalized.pt"))
        elif fmt == "interprot":
            if layer is None:
                raise ImportError_(
                    f"{repo_id}: pass --layer N (InterProt files: esm2_plm1280_l{{4,8,...,33}}_sae4096.safetensors)"
                )
            pats = [f"*_l{layer}_*.safetensors"]
        elif fmt == "esmc":
            cfg = json.loads(Path(hf_hub_download(repo_id, "config.json")).read_text())
            avail = cfg.get("available_layers") or []
            if layer is None and len(avail) != 1:
                raise ImportError_(f"{repo_id}: several layers {avail}; pass --layer N")
            pats = ["config.json", f"layer_{layer if layer is not None else avail[0]}.safetensors"]
        elif fmt == "plm-sae":
            pats = ["config.json", "*.safetensors", "*.bin"]
        else:
            pats = ["*.json", "*.safetensors", "*.npy", "*.pt"]
        return Path(snapshot_download(repo_id, allow_patterns=pats))
    except ImportError_:
        raise
    except Exception as e:  # huggingface_hub: offline without a cache, no such repo/file, network
        raise OSError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Without internet, put the repo in the Hugging Face cache (HF_HOME) or pass a local file/folder."
        ) from None


def _is_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source)) and not Path(source).exists()


# ====================================================================== canonical -> esmsae
def read_source(source: str, fmt: str = "auto", *, layer: int | None = None, k: int | None = None, model: str = "",
                file: str = "", input_norm: str = "") -> Canonical:
    """Read a published SAE (hub id, local file or folder) into canonical form."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ImportError_(f"--format {fmt!r} is not one of auto, {', '.join(FORMATS)}")
    opts = {"layer": layer, "k": k, "model": model, "file": file, "input_norm": input_norm, "source_name": source}
    if _is_hub_id(source):
        fmt = hub_format(source) if fmt == "auto" else fmt
        path = fetch_hub(source, fmt, opts)
        if fmt is None:
            fmt = detect_format(path)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{source}: no such file or folder, and not a hub id (ORG/NAME)")
        if fmt == "auto":
            fmt = detect_format(path)
    if fmt == "esmsae":
        raise ImportError_(f"{source} is already an esmsae checkpoint; use it as it is")
    if path.is_dir():
        path = _pick_file(path, fmt, opts)
        if fmt in ("interplm", "interprot", "esm-sae") and path.is_dir():
            raise ImportError_(f"{path}: a {fmt} SAE is a file; pass the file or --file NAME")
    elif fmt in ("esmc", "plm-sae", "saelens", "sparsify"):
        m = re.match(r"layer_(\d+)\.safetensors$", path.name)
        if fmt == "esmc" and m and opts["layer"] is None:
            opts["layer"] = int(m.group(1))
        path = path.parent
    c = READERS[fmt](path, opts)
    if layer is not None:
        if c.layer is not None and c.layer != layer and fmt not in ("esmc",):
            c.notes.append(f"--layer {layer} overrides the layer {c.layer} read from the source")
        c.layer = layer
    if model:
        c.model = model
    elif not c.model:
        c.model = _model_by_width(c.d_in, fmt)
    if c.layer is None:
        raise ImportError_(f"{source}: the {fmt} files do not say which layer the SAE reads; pass --layer N "
                           "(esmsae convention: hidden_states index, layer L = output of block L)")
    if not c.model:
        raise ImportError_(f"{source}: the {fmt} files do not name the base model; pass --model NAME")
    if k is not None and c.architecture == "topk" and fmt not in ("interprot", "esm-sae") and k != c.k:
        c.notes.append(f"--k {k} overrides the stored k {c.k}")
        c.k = k
    c.source = source
    return c


def _model_by_width(d: int, fmt: str) -> str:
    fam = "esmc" if fmt in ("esmc", "esm-sae") else "esm2"
    names = [n for n, (f, _, w) in KNOWN_MODELS.items() if f == fam and w == d and n != "esmc_6b"]
    return names[0] if len(names) == 1 else ""


def to_sae(c: Canonical):
    """The esmsae :class:`~esmsae.sae.SAE` computing exactly the source's features."""
    from .sae import SAE

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
        raise ImportError_(f"the SAE has d_in {c.d_in} but {c.model} has hidden size {width}; pass the right --model")
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


def import_sae(source: str, out: str | os.PathLike, fmt: str = "auto", **kw: Any) -> Path:
    """``python -m esmsae import``: write the source SAE as an esmsae checkpoint folder."""
    from .checkpoint import save_sae

    c = read_source(source, fmt, **kw)
    return save_sae(to_sae(c), out, canonical_meta(c))


def load_any(source: str, fmt: str = "auto", **kw: Any):
    """An SAE from an esmsae checkpoint, a published file/folder or a hub id; ``.meta`` holds its cfg."""
    from .checkpoint import load_sae

    p = Path(source).expanduser()
    if p.is_dir() and (p / "cfg.json").exists() and (p / "sae.safetensors").exists() and fmt in ("auto", "esmsae"):
        if "esmsae_version" in json.loads((p / "cfg.json").read_text()):
            sae, meta = load_sae(p)
            sae.meta = meta
            return sae
    c = read_source(source, fmt, **kw)
    sae = to_sae(c)
    sae.meta = canonical_meta(c)
    return sae


# ====================================================================== export
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
    from safetensors.torch import save_file

    from .checkpoint import load_sae

    sae, meta = load_sae(folder)
    W_enc, b_enc, W_dec, b_dec, norm = _folded_weights(sae)
    arch = sae.cfg.architecture
    d, Fn = W_enc.shape
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    layer, site = meta.get("layer"), meta.get("site", "resid")
    model = meta.get("base_model", {}).get("name", "")
    if fmt == "saelens":
        sl_norm = {"none": "none", "layernorm_eps": "layer_norm", "unit_norm_sqrt_d": "constant_norm_rescale"}.get(norm)
        if sl_norm is None:
            raise ImportError_(
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
            raise ImportError_(
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
        raise ImportError_(f"--format {fmt!r}: export writes saelens or sparsify")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def import_catalogue() -> list[dict[str, Any]]:
    """The known releases (for the app's import tab)."""
    return [dict(e) for e in CATALOGUE]


def parse_optional_int(text: str, field_name: str) -> int | None:
    """'' -> None, '12' -> 12; anything else is an error naming the field."""
    t = (text or "").strip()
    if not t:
        return None
    try:
        v = int(t)
    except ValueError:
        raise ImportError_(f"{field_name}: expected a whole number, got {t!r}") from None
    if v < 0:
        raise ImportError_(f"{field_name}: must be >= 0, got {v}")
    return v


__all__ = [
    "FORMATS",
    "CATALOGUE",
    "KNOWN_MODELS",
    "Canonical",
    "ImportError_",
    "detect_format",
    "read_source",
    "to_sae",
    "import_sae",
    "load_any",
    "export_sae",
    "import_catalogue",
    "parse_optional_int",
]
