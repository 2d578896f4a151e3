"""esmsae: sparse autoencoders for protein language models (ESM-2, ESM C, UniRep).

The Python API (``load_model``, ``load_sae``, ``features``) lives in :mod:`esmsae.api` and is
imported lazily, so ``python -m esmsae --help`` does not import torch.
"""
from esmsae.core.version import __version__

_API = ("load_model", "load_sae", "features", "Model")


def __getattr__(name: str):
    if name in _API:
        from esmsae import api

        return getattr(api, name)
    raise AttributeError(f"module 'esmsae' has no attribute {name!r}")


__all__ = ["__version__", *_API]
