"""SAE checkpoints: a folder holding ``sae.safetensors`` and ``cfg.json``.

``cfg.json`` records what is needed to use the SAE correctly and to know where it
came from: base model, layer, hook site, d_in, normalisation statistics, BOS/EOS
policy and data provenance. :func:`check_compatible` refuses a model it does not fit.

This module is the one owner of those two files: every read and write of them in esmsae goes
through the functions here (writes are atomic: a temp file, then ``os.replace``), and a test
(``tests/test_layers.py``) fails on a module that names them itself. The published readers
handle foreign formats that happen to use the same names (sparsify) in their own layouts.
Loading *any* SAE (a published one included) is :func:`esmsae.published.load.load_sae`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esmsae.config import ModelConfig, SAEConfig, from_dict, layer_range, resolve_device
from esmsae.core.atomic import explain, write_text_atomic
from esmsae.core.version import __version__

if TYPE_CHECKING:  # torch is imported where weights are touched: the app's run list reads cfg.json only
    import torch

    from esmsae.lm.plm import Hook, ProteinLM
    from esmsae.sae.model import SAE

WEIGHTS = "sae.safetensors"
CFG = "cfg.json"
EVAL = "eval.json"  # the evaluation card (esmsae.sae.evaluate)


def save_sae(sae: SAE, folder: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write the checkpoint folder atomically (build in a temp folder, then swap)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    from safetensors.torch import save_file

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
    write_text_atomic(tmp / CFG, json.dumps(cfg, indent=2) + "\n")
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


def read_raw_cfg(folder: str | os.PathLike) -> dict[str, Any]:
    """``cfg.json`` as written (a bundle's base model still relative to the folder): what a rewrite
    of the checkpoint starts from."""
    folder = Path(folder)
    p = folder / CFG
    if not p.exists():
        raise FileNotFoundError(f"{folder} is not an SAE checkpoint (no {CFG})")
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise ValueError(f"{p} is not valid JSON: {e}") from None


def read_cfg(folder: str | os.PathLike) -> dict[str, Any]:
    """``cfg.json`` with the base model resolved (a bundle records it relative to the folder)."""
    folder = Path(folder)
    meta = read_raw_cfg(folder)
    # a bundle (e.g. data/demo) records its model relative to the checkpoint folder
    base = meta.get("base_model", {})
    name = base.get("name", "")
    if name.startswith(("./", "../")):
        base["name"] = str((folder / name).resolve())
        base["relative_to_checkpoint"] = name
    return meta


def write_cfg(folder: str | os.PathLike, cfg: dict[str, Any]) -> Path:
    """Replace ``cfg.json`` atomically (a reader never sees half a file)."""
    return write_text_atomic(Path(folder) / CFG, json.dumps(cfg, indent=2) + "\n", "SAE checkpoint config")


def weights_file(folder: str | os.PathLike) -> Path:
    """Where a checkpoint keeps its weights (for a modification time or a size; read them with
    :func:`read_weights`)."""
    return Path(folder) / WEIGHTS


def read_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of ``sae.safetensors``, on the CPU, as stored (fp16 in a slimmed bundle)."""
    from safetensors.torch import load_file

    p = Path(folder) / WEIGHTS
    try:
        return load_file(str(p))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder} is not a complete SAE checkpoint: {WEIGHTS} is missing") from None
    except Exception as e:  # safetensors raises its own error type for truncated/corrupt files
        raise ValueError(f"{p} cannot be read (truncated or corrupt?): {e}") from None


def write_weights(folder: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> Path:
    """Replace ``sae.safetensors`` atomically; on a full disk the previous file is untouched."""
    from safetensors.torch import save_file

    p = Path(folder) / WEIGHTS
    tmp = p.with_name(p.name + ".tmp")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    except Exception as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) or "os error" in str(e):
            raise explain(p, e, "SAE checkpoint") from e
        raise
    os.replace(tmp, p)
    return p


def weights_sha256(folder: str | os.PathLike) -> str:
    """The first 16 hex digits of the weights' sha256: which SAE an index was built from."""
    return hashlib.sha256((Path(folder) / WEIGHTS).read_bytes()).hexdigest()[:16]


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, ignore: tuple[str, ...] = ()) -> Path:
    """Copy a checkpoint folder (its side files too, less the glob patterns in ``ignore``) to ``dst``."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*ignore) if ignore else None)
    return Path(dst)


def side_files(folder: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """The files of a checkpoint folder other than its own two (eval.json, representation.json, ...)."""
    return sorted(f for f in Path(folder).glob(pattern) if f.name not in (WEIGHTS, CFG) and f.is_file())


def has_cfg(folder: str | os.PathLike) -> bool:
    return (Path(folder) / CFG).is_file()


def has_weights(folder: str | os.PathLike) -> bool:
    return (Path(folder) / WEIGHTS).is_file()


def find_checkpoints(root: str | os.PathLike, depth: int = 3) -> list[Path]:
    """Checkpoint folders 1..depth levels below ``root`` (both files present; half-written ``.tmp``
    and ``.old`` folders of an interrupted save skipped), newest ``cfg.json`` first."""
    root = Path(root)
    found = []
    for d in range(1, depth + 1):
        for cfg in root.glob("/".join(["*"] * d + [CFG])):
            ck = cfg.parent
            if any(part.endswith((".tmp", ".old")) for part in ck.relative_to(root).parts) or not has_weights(ck):
                continue
            found.append((cfg.stat().st_mtime, ck))
    return [ck for _, ck in sorted(found, key=lambda x: -x[0])]


def is_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is an esmsae checkpoint folder (its cfg.json was written by esmsae)."""
    p = Path(folder) / CFG
    try:
        return p.is_file() and "esmsae_version" in json.loads(p.read_text())
    except (ValueError, OSError):
        return False


def load_checkpoint(
    folder: str | os.PathLike, *, layer: int | None = None, device: str = "cpu", plm: ProteinLM | None = None
) -> SAE:
    """An esmsae checkpoint folder as an :class:`SAE` whose ``meta`` is its cfg (base model, layer,
    site, normalisation, provenance). A ``layer`` that disagrees with the folder's is an error; with
    ``plm`` given, the SAE is checked against that model first (:func:`check_compatible`)."""
    folder = Path(folder).expanduser()
    if not is_checkpoint(folder):
        inside = find_checkpoints(folder, depth=2) if folder.is_dir() else []
        hint = f"; the checkpoint inside it is {inside[0]}" if inside else ""
        raise FileNotFoundError(
            f"{folder} is not an esmsae checkpoint folder (cfg.json written by esmsae + {WEIGHTS}){hint}")
    sae = _load_folder(folder)
    if layer is not None and sae.meta.get("layer") != layer:
        raise ValueError(f"{folder} is the SAE of layer {sae.meta.get('layer')}, not layer {layer}")
    if plm is not None:
        check_compatible(sae.meta, plm)
    return sae.to(resolve_device(device)).eval()


def _load_folder(folder: Path) -> SAE:
    from esmsae.sae.model import SAE

    meta = read_cfg(folder)
    scfg = from_dict(SAEConfig, meta["sae"])
    sae = SAE(scfg, meta["d_in"], seed=None, meta=meta)
    state = read_weights(folder)
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
    from esmsae.lm.plm import ModelMismatchError

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
    from esmsae.lm.plm import Hook

    return Hook(int(meta["layer"]), meta["site"])


def read_eval(sae_dir: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(sae_dir) / EVAL
    return json.loads(p.read_text()) if p.exists() else None
