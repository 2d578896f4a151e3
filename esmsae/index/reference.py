"""Reference display statistics of an SAE, computed over the proteins of a feature index built from
it and stored in the checkpoint (through :mod:`esmsae.sae.checkpoint`, the files' one owner)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from esmsae.index.reader import reference_stats
from esmsae.sae.checkpoint import read_raw_cfg, read_weights, weights_sha256, write_cfg, write_weights


def write_reference_stats(folder: str | os.PathLike, index_path: str | os.PathLike) -> dict[str, Any]:
    """Store per-feature reference max and IDF in the checkpoint (``display_max`` /
    ``display_idf`` in ``sae.safetensors``, described under ``display_stats`` in ``cfg.json``),
    computed over the proteins of a feature index built from this SAE. The inspector, the
    Python API (``encode_scaled``) and every later index of the SAE then scale by these, so
    two indexes of one SAE agree (Biohub ships its SAEs the same way)."""
    folder = Path(folder)
    sae_sha = weights_sha256(folder)
    max_F, idf_F, meta = reference_stats(index_path)
    cfg = read_raw_cfg(folder)
    prior = cfg.get("display_stats", {}).get("weights_sha256_before")
    if meta.get("sae_sha256") not in (sae_sha, prior):
        raise ValueError(
            f"{index_path} was built from another SAE (weights sha256 {meta.get('sae_sha256')}, this checkpoint"
            f" {sae_sha})"
        )
    state = read_weights(folder)
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
    cfg["display_stats"] = info
    write_weights(folder, state)
    write_cfg(folder, cfg)
    return info
