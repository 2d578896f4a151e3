"""Published protein SAEs as esmsae checkpoints: ``python -m esmsae import`` / ``export``, and
:func:`esmsae.published.load.load_sae` on anything that is not an esmsae folder.

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

One module per format (``interplm.py``, ``interprot.py``, ``esmc.py``, ``plm_sae.py``, ``esm_sae.py``,
``saelens.py``, ``sparsify.py``: each a ``read(path, opts) -> Canonical``);
``canonical.py`` (the canonical form and its conversion to an SAE), ``catalogue.py`` (known models
and releases), ``hub.py`` (fetching), ``source.py`` (detection and dispatch: a new source touches
its reader and the ``READERS`` table), ``convert.py`` (import and export, which write checkpoints).
Nothing is re-exported: import each name from the module that owns it. ``load.py`` holds
:func:`~esmsae.published.load.load_sae`, the one loader of any SAE (an esmsae folder or a published one).
"""
