"""Related features within one SAE: the features whose decoder directions are closest to a feature's
(cosine), each with its concept verdict, for the feature page's "Related features" tab. The decoder is
read once per checkpoint (through :mod:`esmsae.sae.checkpoint`) and kept normalised."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.sae.checkpoint import read_weights, weights_file


@functools.lru_cache(maxsize=2)
def _unit_decoder(path: str, mtime: float) -> np.ndarray:
    W = read_weights(path)["W_dec"].float().numpy()  # [F, d]
    return W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)


def decoder_neighbours(sae_dir: str | Path, f: int, n: int = 10) -> pd.DataFrame:
    """The ``n`` features of the same SAE with the largest decoder cosine to feature ``f`` (feature, cosine)."""
    W = _unit_decoder(str(sae_dir), weights_file(sae_dir).stat().st_mtime)
    cos = W @ W[f]
    cos[f] = -np.inf
    top = np.argsort(-cos)[:n]
    return pd.DataFrame({"feature": top.astype(int), "decoder cosine": cos[top].round(3)})
