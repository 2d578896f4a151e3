"""Published protein SAEs as esmsae checkpoints: ``python -m esmsae import`` / ``export``, and
:func:`esmsae.checkpoint.load_sae` on anything that is not an esmsae folder.

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

One module per format (``interplm.py`` ... ``sparsify.py``, each a ``read(path, opts) -> Canonical``);
``canonical.py`` (the canonical form and its conversion to an SAE), ``catalogue.py`` (known models
and releases), ``hub.py`` (fetching), ``source.py`` (detection and dispatch: a new source touches
its reader and the ``READERS`` table), ``convert.py`` (import and export, which write checkpoints).
Names are re-exported lazily, so ``checkpoint`` can read through ``source`` without a cycle.
"""
from __future__ import annotations

from importlib import import_module

_WHERE = {
    "FORMATS": "catalogue", "KNOWN_MODELS": "catalogue", "CATALOGUE": "catalogue", "import_catalogue": "catalogue",
    "hub_format": "catalogue", "Canonical": "canonical", "PublishedFormatError": "canonical", "to_sae": "canonical",
    "canonical_meta": "canonical", "detect_format": "source", "read_source": "source", "READERS": "source",
    "fetch_hub": "hub", "import_sae": "convert", "export_sae": "convert",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'esmsae.published' has no attribute {name!r}")


__all__ = sorted(_WHERE)
