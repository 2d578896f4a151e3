"""From a source (hub id, local file or folder) to the canonical form: format detection, picking
the file of the wanted layer, the reader of each format, and the options that override the files."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from esmsae.published import esm_sae, esmc, interplm, interprot, plm_sae, saelens, sparsify
from esmsae.published.canonical import Canonical, PublishedFormatError, _model_by_width
from esmsae.published.catalogue import FORMATS, hub_format
from esmsae.published.hub import fetch_hub
from esmsae.published.interprot import _INTERPROT_NAME
from esmsae.published.saelens import _hook_to_layer
from esmsae.sae.checkpoint import is_checkpoint

READERS: dict[str, Callable[[Path, dict], Canonical]] = {
    "interplm": interplm.read, "interprot": interprot.read, "esmc": esmc.read, "plm-sae": plm_sae.read,
    "esm-sae": esm_sae.read, "saelens": saelens.read, "sparsify": sparsify.read,
}


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
        raise PublishedFormatError(
            f"{path}: cannot tell which published SAE format this file is; pass --format ({', '.join(FORMATS)})"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if is_checkpoint(path):
        return "esmsae"
    if (path / "sae.safetensors").exists() and (path / "cfg.json").exists():  # sparsify's own layout
        return "sparsify"
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
    raise PublishedFormatError(
        f"{path}: no known SAE layout found (looked for cfg.json + sae.safetensors, sae_weights.safetensors, "
        "config.json + layer_N.safetensors, layer_N/ae_*.pt, esm2_plm*_sae*.safetensors); pass --format"
    )


def _pick_file(folder: Path, fmt: str, opts: dict) -> Path:
    """Inside a folder or hub snapshot, the file (or subfolder) of the wanted layer."""
    if opts.get("file"):
        p = folder / opts["file"]
        if not p.exists():
            raise PublishedFormatError(f"{folder}: no {opts['file']}")
        return p
    layer = opts.get("layer")
    if fmt == "interplm":
        if layer is None:
            found = sorted(folder.glob("layer_*/ae_normalized.pt"))
            if len(found) != 1:
                raise PublishedFormatError(
                    f"{folder}: pass --layer N (InterPLM ships one SAE per layer: {[p.parent.name for p in found]})"
                )
            return found[0]
        for name in ("ae_normalized.pt", "ae_unnormalized.pt"):
            if (folder / f"layer_{layer}" / name).exists():
                return folder / f"layer_{layer}" / name
        raise PublishedFormatError(f"{folder}: no layer_{layer}/ae_normalized.pt")
    if fmt == "interprot":
        found = sorted(p for p in folder.glob("esm2_plm*_sae*.safetensors") if layer is None or
                       ((m := _INTERPROT_NAME.search(p.name)) and int(m.group(2)) == layer))
        plain = [p for p in found if "_100k" not in p.name]
        found = plain or found
        if len(found) != 1:
            raise PublishedFormatError(
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
            raise PublishedFormatError(
                f"{folder}: several SAEs {[str(p.relative_to(folder)) for p in found]}; pass --file SUBFOLDER"
            )
        return found[0]
    return folder


def _is_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source)) and not Path(source).exists()


def read_source(source: str, fmt: str = "auto", *, layer: int | None = None, k: int | None = None, model: str = "",
                file: str = "", input_norm: str = "") -> Canonical:
    """Read a published SAE (hub id, local file or folder) into canonical form."""
    if fmt != "auto" and fmt not in FORMATS:
        raise PublishedFormatError(f"--format {fmt!r} is not one of auto, {', '.join(FORMATS)}")
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
        raise PublishedFormatError(f"{source} is already an esmsae checkpoint; use it as it is")
    if path.is_dir():
        path = _pick_file(path, fmt, opts)
        if fmt in ("interplm", "interprot", "esm-sae") and path.is_dir():
            raise PublishedFormatError(f"{path}: a {fmt} SAE is a file; pass the file or --file NAME")
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
        raise PublishedFormatError(f"{source}: the {fmt} files do not say which layer the SAE reads; pass --layer N "
                           "(esmsae convention: hidden_states index, layer L = output of block L)")
    if not c.model:
        raise PublishedFormatError(f"{source}: the {fmt} files do not name the base model; pass --model NAME")
    if k is not None and c.architecture == "topk" and fmt not in ("interprot", "esm-sae") and k != c.k:
        c.notes.append(f"--k {k} overrides the stored k {c.k}")
        c.k = k
    c.source = source
    return c
