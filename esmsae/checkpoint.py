"""SAE checkpoints: a folder holding ``sae.safetensors`` and ``cfg.json``.

``cfg.json`` records what is needed to use the SAE correctly and to know where it
came from: base model, layer, hook site, d_in, normalisation statistics, BOS/EOS
policy and data provenance. :func:`check_compatible` refuses a model it does not fit.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ._version import __version__
from .atomic import explain
from .config import ModelConfig, SAEConfig, from_dict, layer_range, resolve_device
from .plm import Hook, ModelMismatchError, ProteinLM
from .sae import SAE

WEIGHTS = "sae.safetensors"
CFG = "cfg.json"
EVAL = "eval.json"  # the evaluation card (esmsae.evaluate)


def save_sae(sae: SAE, folder: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write the checkpoint folder atomically (build in a temp folder, then swap)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    try:
        save_file(tensors, str(tmp / WEIGHTS))
    except Exception as e:  # a full disk (safetensors raises its own error type): the previous checkpoint is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) or "os error" in str(e):
            raise explain(folder / WEIGHTS, e, "SAE checkpoint") from e
        raise
    cfg = {
        "esmsae_version": __version__,
        "sae": {**sae.cfg.__dict__, "d_in": sae.d_in},
        "d_in": sae.d_in,
        "normalization": {
            "mode": sae.cfg.normalize,
            "scale": float(sae.norm_scale),
            "mean": (
                "tensor 'norm_mean' in sae.safetensors" if sae.cfg.normalize in ("center", "center_scalar") else None
            ),
        },
        "bos_eos": "stripped",
        **meta,
    }
    (tmp / CFG).write_text(json.dumps(cfg, indent=2) + "\n")
    # keep anything else already in the folder (eval.json, index) across the swap
    if folder.exists():
        for extra in folder.iterdir():
            if extra.name not in (WEIGHTS, CFG) and not (tmp / extra.name).exists():
                os.replace(extra, tmp / extra.name)
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


def write_reference_stats(folder: str | os.PathLike, index_path: str | os.PathLike) -> dict[str, Any]:
    """Store per-feature reference max and IDF in the checkpoint (``display_max`` /
    ``display_idf`` in ``sae.safetensors``, described under ``display_stats`` in ``cfg.json``),
    computed over the proteins of a feature index built from this SAE. The inspector, the
    Python API (``encode_scaled``) and every later index of the SAE then scale by these, so
    two indexes of one SAE agree (Biohub ships its SAEs the same way)."""
    import hashlib

    from .index.reader import reference_stats

    folder = Path(folder)
    sae_sha = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()[:16]
    max_F, idf_F, meta = reference_stats(index_path)
    prior = json.loads((folder / CFG).read_text()).get("display_stats", {}).get("weights_sha256_before")
    if meta.get("sae_sha256") not in (sae_sha, prior):
        raise ValueError(
            f"{index_path} was built from another SAE (weights sha256 {meta.get('sae_sha256')}, this checkpoint"
            f" {sae_sha})"
        )
    state = load_file(str(folder / WEIGHTS))
    import torch

    state["display_max"] = torch.from_numpy(max_F)
    state["display_idf"] = torch.from_numpy(idf_F)
    info = {
        "reference": (
            f"feature index {Path(index_path).name}: {meta['n_proteins']} proteins, {meta['n_residues']} residues"
        ),
        "n_proteins": meta["n_proteins"],
        "n_residues": meta["n_residues"],
        "max": "largest activation over the reference proteins",
        "weights_sha256_before": prior or sae_sha,  # the index's sha of these weights, before the statistics were added
        "idf": "log(reference proteins / reference proteins where the feature fires)",
    }
    cfg = json.loads((folder / CFG).read_text())
    cfg["display_stats"] = info
    tmp = folder / (WEIGHTS + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, folder / WEIGHTS)
    from .atomic import write_text_atomic

    write_text_atomic(folder / CFG, json.dumps(cfg, indent=2) + "\n")
    return info


def read_cfg(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    p = folder / CFG
    if not p.exists():
        raise FileNotFoundError(f"{folder} is not an SAE checkpoint (no {CFG})")
    meta = json.loads(p.read_text())
    # a bundle (e.g. data/demo) records its model relative to the checkpoint folder
    base = meta.get("base_model", {})
    name = base.get("name", "")
    if name.startswith(("./", "../")):
        base["name"] = str((folder / name).resolve())
        base["relative_to_checkpoint"] = name
    return meta


def is_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is an esmsae checkpoint folder (its cfg.json was written by esmsae)."""
    p = Path(folder) / CFG
    try:
        return p.is_file() and "esmsae_version" in json.loads(p.read_text())
    except (ValueError, OSError):
        return False


def load_sae(
    source: str | os.PathLike,
    *,
    layer: int | None = None,
    format: str = "auto",
    device: str = "cpu",
    plm: ProteinLM | None = None,
    k: int | None = None,
    model: str = "",
    file: str = "",
) -> SAE:
    """The one way to load an SAE: an esmsae checkpoint folder, or a published SAE (hub id, file or
    folder in its source's own layout; see :mod:`esmsae.published`), read into an :class:`SAE`
    whose ``meta`` is the checkpoint's cfg (base model, layer, site, normalisation, provenance).

    ``layer``, ``k``, ``model`` and ``file`` choose or complete a published SAE (an esmsae folder
    records them; a ``layer`` that disagrees with it is an error). With ``plm`` given, the SAE is
    checked against that model first (:func:`check_compatible`)."""
    folder = Path(source).expanduser()
    if format in ("auto", "esmsae") and is_checkpoint(folder):
        sae = _load_folder(folder)
        if layer is not None and sae.meta.get("layer") != layer:
            raise ValueError(f"{folder} is the SAE of layer {sae.meta.get('layer')}, not layer {layer}")
    elif format == "esmsae":
        raise FileNotFoundError(f"{folder} is not an esmsae checkpoint folder (cfg.json written by esmsae + {WEIGHTS})")
    else:
        from .published.canonical import canonical_meta, to_sae
        from .published.source import read_source

        c = read_source(str(source), format, layer=layer, k=k, model=model, file=file)
        sae = to_sae(c)
        sae.meta = canonical_meta(c)
    if plm is not None:
        check_compatible(sae.meta, plm)
    return sae.to(resolve_device(device)).eval()


def _load_folder(folder: Path) -> SAE:
    meta = read_cfg(folder)
    scfg = from_dict(SAEConfig, meta["sae"])
    sae = SAE(scfg, meta["d_in"], seed=None, meta=meta)
    try:
        state = load_file(str(folder / WEIGHTS))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder} is not a complete SAE checkpoint: {WEIGHTS} is missing") from None
    except Exception as e:  # safetensors raises its own error type for truncated/corrupt files
        raise ValueError(f"{folder / WEIGHTS} cannot be read (truncated or corrupt?): {e}") from None
    # optional reference display statistics (shipped by Biohub, or computed over a reference set)
    sae.set_display_stats(state.get("display_max"), state.get("display_idf"))
    missing = set(sae.state_dict()) - set(state)
    if missing:
        raise ValueError(f"{folder / WEIGHTS} lacks tensors {sorted(missing)}")
    for key, v in state.items():
        if key in sae.state_dict() and sae.state_dict()[key].shape != v.shape:
            raise ValueError(
                f"{folder / WEIGHTS}: tensor {key} has shape {tuple(v.shape)}, cfg.json implies"
                f" {tuple(sae.state_dict()[key].shape)}"
            )
    sae.load_state_dict(state)
    return sae


def model_config_of(meta: dict[str, Any], name: str = "") -> ModelConfig:
    """The protein LM a checkpoint was trained on, with the recorded window / dtype settings;
    the base model's name comes from ``base_model`` (resolved by :func:`read_cfg`). ``name``
    runs another model instead (its family is then guessed from the name). The forward batch
    size is not a property of the model: it is left to the machine that runs it (auto)."""
    base = meta.get("base_model", {})
    rec = dict(meta.get("model_config") or {})
    rec.pop("batch_tokens", None)
    rec["device"] = "auto"  # where it ran is not a requirement: a GPU-trained checkpoint loads on a CPU machine
    rec["name"] = name or base.get("name") or rec.get("name", "")
    if not rec["name"]:
        raise ValueError("cfg.json records no base model; pass a model name")
    if not name and base.get("relative_to_checkpoint") and not os.path.exists(rec["name"]):
        raise FileNotFoundError(
            f"the checkpoint records its base model relative to its own folder ({base['relative_to_checkpoint']!r}),"
            f" and there is nothing at {rec['name']}: copy the model folder along with the checkpoint (as data/demo"
            " keeps sae/ and model/ side by side) or name the model (--model / model_name)"
        )
    rec["family"] = "auto" if name else base.get("family", rec.get("family", "auto"))
    return from_dict(ModelConfig, rec)


def check_compatible(meta: dict[str, Any], plm: ProteinLM, strict_name: bool = True) -> None:
    """Raise :class:`ModelMismatchError` when an SAE checkpoint does not fit ``plm``."""
    base = meta.get("base_model", {})
    problems = []
    if meta["d_in"] != plm.d_model:
        problems.append(f"SAE d_in is {meta['d_in']} but {plm.name} has hidden size {plm.d_model}")
    if base.get("n_layers") is not None and base["n_layers"] != plm.n_layers:
        problems.append(f"SAE was trained on a {base['n_layers']}-layer model, {plm.name} has {plm.n_layers} layers")
    layer, site = meta.get("layer"), meta.get("site")
    lo, hi = layer_range(site, plm.n_layers)
    if layer is not None and not lo <= layer <= hi:
        problems.append(f"SAE layer {layer} ({site}) does not exist in {plm.name}")
    if (
        strict_name
        and base.get("name")
        and os.path.abspath(base["name"]) != os.path.abspath(plm.name)
        and base["name"] != plm.name
    ):
        problems.append(f"SAE was trained on {base['name']!r}, not {plm.name!r}")
    if problems:
        raise ModelMismatchError("SAE checkpoint does not fit this model: " + "; ".join(problems))


def hook_of(meta: dict[str, Any]) -> Hook:
    """The hook (layer, site) a checkpoint reads."""
    return Hook(int(meta["layer"]), meta["site"])


def read_eval(sae_dir: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(sae_dir) / EVAL
    return json.loads(p.read_text()) if p.exists() else None
