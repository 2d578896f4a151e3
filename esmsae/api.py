"""The short Python API (exported from ``esmsae``)::

    import esmsae
    lm = esmsae.load_model("facebook/esm2_t6_8M_UR50D")      # hub name, local folder, esmc_300m, ...
    sae = esmsae.load_sae("Elana/InterPLM-esm2-8m", layer=4)  # hub id, published file, or esmsae checkpoint
    acts = lm.embed("MKTAYIAKQR", layer=4)                   # [L, d], BOS/EOS stripped, validated input
    feats = sae.encode_dense(acts)                            # [L, F], no autograd graph

plus ``lm.embed([...])`` (a list of tensors), ``lm.embed(..., pool="mean"|"last")`` (one
vector per protein), :func:`features` (model + SAE over many sequences, dense, sparse COO or
scaled by the SAE's reference max / max x IDF) and ``sae.encode_sparse`` / ``sae.encode_scaled``.
"""
from __future__ import annotations

from esmsae.analysis.model import Model, features, load_model, pool_residues
from esmsae.published.load import load_sae

# A facade: nothing inside the package imports this module.
__all__ = ["Model", "load_model", "load_sae", "features", "pool_residues"]
