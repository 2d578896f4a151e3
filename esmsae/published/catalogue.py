"""What esmsae knows by name: the formats, the protein LMs (family, blocks, width) and the known
releases (the app's import tab; hub ids to formats)."""
from __future__ import annotations

import re
from typing import Any

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


def hub_format(repo_id: str) -> str | None:
    return next((fmt for pat, fmt in _HUB_FORMATS if pat.search(repo_id)), None)


def import_catalogue() -> list[dict[str, Any]]:
    """The known releases (for the app's import tab)."""
    return [dict(e) for e in CATALOGUE]
