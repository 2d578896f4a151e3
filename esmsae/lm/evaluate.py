"""How good is the protein LM itself? Next-residue perplexity of a causal LM (UniRep) on held-out
proteins, next to the two baselines any sequence model must beat: a unigram (residue frequencies)
and a bigram (the residue given the one before it), both counted on training proteins and scored
on the same positions. (The ESM path's masked-LM figures live in :mod:`esmsae.lm.train`.)"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from esmsae.core.fasta import STANDARD
from esmsae.lm.plm import ProteinLM, length_batches

_AA = np.full(256, 20, np.int64)  # 20 = not a standard residue (not scored)
for _i, _a in enumerate(STANDARD):
    _AA[ord(_a)] = _i


def _codes(s: str) -> np.ndarray:
    return _AA[np.frombuffer(s.encode("ascii"), np.uint8)]


def ngram_tables(train: Sequence[str], alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(unigram [20], bigram [21, 20]) probabilities from training proteins; bigram row 20 is the
    first residue (after the start). Add-``alpha`` smoothing."""
    c2 = np.zeros((21, 21))
    for s in train:
        a = _codes(s)
        np.add.at(c2, (np.r_[20, a[:-1]], a), 1)
    c2 = c2[:, :20]
    uni = (c2.sum(0) + alpha) / (c2.sum() + 20 * alpha)
    big = (c2 + alpha) / (c2.sum(1, keepdims=True) + 20 * alpha)
    return uni, big


@torch.no_grad()
def next_residue_eval(plm: ProteinLM, heldout: Sequence[str], train: Sequence[str], max_len: int = 400) -> dict:
    """Perplexity of predicting each residue from the ones before it (residues 1..L of the first
    ``max_len`` of each held-out protein; only the 20 standard residues are scored), against the
    unigram and bigram on exactly those positions. Means are per residue."""
    if getattr(plm, "objective", "mlm") != "causal":
        raise ValueError(f"{plm.name} is a masked LM: next-residue perplexity needs a causal LM (UniRep)")
    uni, big = ngram_tables(train)
    seqs = [s[:max_len] for s in heldout]
    ce_lm = ce_uni = ce_big = 0.0
    n = 0
    for batch in length_batches([len(s) for s in seqs], plm.cfg.resolved_batch_tokens(), extra=2):
        sub = [seqs[i] for i in batch]
        ids, attn = plm.tokenize(sub)
        logp = F.log_softmax(plm.logits(ids, attn), -1).cpu()  # [B, L+2, V]; position t predicts token t+1
        for r, s in enumerate(sub):
            a = _codes(s)
            ok = a < 20
            lp = logp[r, np.arange(len(s)), ids[r, 1: len(s) + 1].cpu()].numpy()  # log P(residue t | residues < t)
            prev = np.r_[20, a[:-1]]
            ce_lm -= float(lp[ok].sum())
            ce_uni -= float(np.log(uni[a[ok]]).sum())
            ce_big -= float(np.log(big[prev[ok], a[ok]]).sum())
            n += int(ok.sum())
    n = max(n, 1)
    out = {
        "next_ppl": math.exp(ce_lm / n),
        "next_ce": ce_lm / n,
        "unigram_ppl": math.exp(ce_uni / n),
        "unigram_ce": ce_uni / n,
        "bigram_ppl": math.exp(ce_big / n),
        "bigram_ce": ce_big / n,
        "n_residues": n,
        "n_proteins": len(seqs),
        "max_len": max_len,
        "n_train_proteins": len(train),
    }
    out["gain_over_bigram_nats"] = out["bigram_ce"] - out["next_ce"]
    return out
