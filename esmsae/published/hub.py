"""Fetching a published SAE from the Hugging Face hub (or its cache: ``HF_HUB_OFFLINE=1`` works)
through huggingface_hub, only the files the wanted SAE needs."""
from __future__ import annotations

import json
from pathlib import Path

from esmsae.published.canonical import PublishedFormatError


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
                raise PublishedFormatError(f"{repo_id}: InterPLM ships one SAE per layer; pass --layer N")
            return Path(hf_hub_download(repo_id, f"layer_{layer}/ae_normalized.pt"))
        elif fmt == "interprot":
            if layer is None:
                raise PublishedFormatError(
                    f"{repo_id}: pass --layer N (InterProt files: esm2_plm1280_l{{4,8,...,33}}_sae4096.safetensors)"
                )
            pats = [f"*_l{layer}_*.safetensors"]
        elif fmt == "esmc":
            cfg = json.loads(Path(hf_hub_download(repo_id, "config.json")).read_text())
            avail = cfg.get("available_layers") or []
            if layer is None and len(avail) != 1:
                raise PublishedFormatError(f"{repo_id}: several layers {avail}; pass --layer N")
            pats = ["config.json", f"layer_{layer if layer is not None else avail[0]}.safetensors"]
        elif fmt == "plm-sae":
            pats = ["config.json", "*.safetensors", "*.bin"]
        else:
            pats = ["*.json", "*.safetensors", "*.npy", "*.pt"]
        return Path(snapshot_download(repo_id, allow_patterns=pats))
    except PublishedFormatError:
        raise
    except Exception as e:  # huggingface_hub: offline without a cache, no such repo/file, network
        raise OSError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Without internet, put the repo in the Hugging Face cache (HF_HOME) or pass a local file/folder."
        ) from None
