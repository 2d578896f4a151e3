"""esmsae: sparse autoencoders for protein language models (ESM-2, ESM C)."""
__version__ = "0.1.0"
