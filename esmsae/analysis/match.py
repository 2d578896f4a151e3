"""Relating the features of two SAEs: decoder cosine and activation correlation.

* **Decoder cosine** (same d_in: two SAEs of one layer, different sizes or seeds, an imported
  published SAE and one trained here): cosine between decoder directions, computed in blocks
  of A's features so memory is bounded by the block x B's features.
* **Activation correlation** (any two SAEs, also across layers and models): Pearson correlation
  of the two SAEs' per-residue activations over a shared protein set, from running sums of the
  sparse codes (sum a, sum b, sum a^2, sum b^2, sum a*b), so the residues are never held.

For every feature of A the best matches in B; a summary with the match rate above a threshold,
the features of A without a counterpart, and feature splitting (one feature of A that is the best
match of several features of B, as when a small SAE is compared with a larger one; Bricken et
al. 2023, "Towards monosemanticity", feature splitting).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

BLOCK = 2048  # rows of A per block of the cosine / correlation matrix


@dataclass
class MatchResult:
    """Best matches of every feature of A in B (``top`` per feature), and B's best match in A."""

    method: str  # decoder_cosine | activation_correlation
    pairs: pd.DataFrame  # feature_a, rank, feature_b, score
    best_a_in_b: np.ndarray  # [F_b] best feature of A for each feature of B
    best_score_b: np.ndarray  # [F_b]

    def summary(self, threshold: float = 0.7) -> dict:
        first = self.pairs[self.pairs["rank"] == 0].set_index("feature_a")["score"]
        matched = first >= threshold
        strong_b = self.best_score_b >= threshold
        counts = (
            np.bincount(self.best_a_in_b[strong_b], minlength=len(first))
            if strong_b.any()
            else np.zeros(len(first), int)
        )
        return {
            "method": self.method,
            "threshold": threshold,
            "n_features_a": int(len(first)),
            "n_features_b": int(len(self.best_a_in_b)),
            "match_rate": float(matched.mean()) if len(first) else 0.0,
            "median_best_score": float(first.median()) if len(first) else 0.0,
            "no_counterpart": int((~matched).sum()),
            "split_features": int((counts >= 2).sum()),  # features of A that several features of B map to
            "examples_split": [int(i) for i in np.flatnonzero(counts >= 2)[:10]],
        }


def _top_pairs(
    score_rows: Iterable[tuple[int, Tensor]], top: int, n_b: int
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Collect the top matches of each A row and, across rows, the best A row of each B column."""
    fa, rk, fb, sc = [], [], [], []
    best_b = torch.full((n_b,), -float("inf"))
    arg_b = torch.zeros(n_b, dtype=torch.long)
    for lo, S in score_rows:  # S: [rows of A, F_b]
        v, i = S.topk(min(top, S.shape[1]), dim=1)
        n = S.shape[0]
        fa.append(np.repeat(np.arange(lo, lo + n), v.shape[1]))
        rk.append(np.tile(np.arange(v.shape[1]), n))
        fb.append(i.reshape(-1).numpy())
        sc.append(v.reshape(-1).numpy())
        col_v, col_i = S.max(0)
        better = col_v > best_b
        best_b[better] = col_v[better]
        arg_b[better] = col_i[better] + lo
    pairs = pd.DataFrame({"feature_a": np.concatenate(fa), "rank": np.concatenate(rk), "feature_b": np.concatenate(fb),
                          "score": np.concatenate(sc).astype(np.float64)})
    return pairs, arg_b.numpy(), best_b.numpy()


@torch.no_grad()
def decoder_cosine(sae_a, sae_b, top: int = 5) -> MatchResult:
    """Cosine between decoder directions (needs the same input width)."""
    if sae_a.d_in != sae_b.d_in:
        raise ValueError(f"decoder cosine needs one input width: A has d_in {sae_a.d_in}, B {sae_b.d_in}; "
                         "use activation correlation on a shared protein set instead")
    A = torch.nn.functional.normalize(sae_a.W_dec.detach().float().cpu(), dim=1)
    B = torch.nn.functional.normalize(sae_b.W_dec.detach().float().cpu(), dim=1)
    rows = ((lo, A[lo:lo + BLOCK] @ B.T) for lo in range(0, A.shape[0], BLOCK))
    return MatchResult("decoder_cosine", *_top_pairs(rows, top, B.shape[0]))


class CorrelationAccumulator:
    """Running sums for the Pearson correlation of two sets of sparse features over tokens."""

    def __init__(self, n_a: int, n_b: int):
        self.n = 0
        self.sa, self.sb = torch.zeros(n_a, dtype=torch.float64), torch.zeros(n_b, dtype=torch.float64)
        self.saa, self.sbb = torch.zeros(n_a, dtype=torch.float64), torch.zeros(n_b, dtype=torch.float64)
        self.sab = torch.zeros(n_a, n_b, dtype=torch.float64)

    def add(self, fa_TF: Tensor, fb_TF: Tensor) -> None:
        """Dense [T, F_a] and [T, F_b] activations of the same T tokens."""
        if fa_TF.shape[0] != fb_TF.shape[0]:
            raise ValueError(f"the two SAEs saw different numbers of residues ({fa_TF.shape[0]} vs {fb_TF.shape[0]})")
        a, b = fa_TF.double(), fb_TF.double()
        self.n += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.saa += a.pow(2).sum(0)
        self.sbb += b.pow(2).sum(0)
        # A is sparse (k active latents a residue): A^T B costs nnz(A) x F_b, not T x F_a x F_b
        self.sab += torch.sparse.mm(a.T.to_sparse(), b)

    def correlation(self) -> Tensor:
        n = max(self.n, 1)
        cov = self.sab / n - torch.outer(self.sa / n, self.sb / n)
        va = (self.saa / n - (self.sa / n) ** 2).clamp_min(0)
        vb = (self.sbb / n - (self.sb / n) ** 2).clamp_min(0)
        den = torch.sqrt(torch.outer(va, vb))
        return torch.where(den > 1e-12, cov / den.clamp_min(1e-12), torch.zeros_like(cov)).float()


def activation_correlation(feats: Iterable[tuple[Tensor, Tensor]], n_a: int, n_b: int, top: int = 5) -> MatchResult:
    """Pearson correlation of per-residue activations, from (A features [L, F_a], B features [L, F_b])
    pairs of the same proteins (features that never fire correlate 0 with everything)."""
    acc = CorrelationAccumulator(n_a, n_b)
    for fa, fb in feats:
        acc.add(fa, fb)
    C = acc.correlation()
    rows = ((lo, C[lo:lo + BLOCK]) for lo in range(0, n_a, BLOCK))
    return MatchResult("activation_correlation", *_top_pairs(rows, top, n_b))


def match_on_proteins(lm_a, sae_a, lm_b, sae_b, sequences: list[str], top: int = 5) -> MatchResult:
    """Activation correlation of two SAEs (each run at its own recorded layer, each on its own
    model) over the same proteins."""
    from esmsae.analysis.model import features

    def pairs():
        for s in sequences:
            yield features(lm_a, sae_a, s), features(lm_b, sae_b, s)

    return activation_correlation(pairs(), sae_a.cfg.n_latents, sae_b.cfg.n_latents, top)


def match_saes(sae_a, sae_b, sequences: list[str] = (), top: int = 5, models: dict | None = None) -> list[MatchResult]:
    """Every way two SAEs can be related: decoder cosine when they share d_in, activation
    correlation on ``sequences`` when given (each SAE on its own recorded model, loaded once per
    distinct model; ``models`` maps a base-model name to an already loaded one)."""
    from esmsae.analysis.model import load_model

    results = []
    if sae_a.d_in == sae_b.d_in:
        results.append(decoder_cosine(sae_a, sae_b, top))
    if len(sequences):
        models = dict(models or {})
        for sae in (sae_a, sae_b):
            name = sae.meta["base_model"]["name"]
            if name not in models:
                models[name] = load_model(name)
        lm_a, lm_b = (models[s.meta["base_model"]["name"]] for s in (sae_a, sae_b))
        results.append(match_on_proteins(lm_a, sae_a, lm_b, sae_b, list(sequences), top))
    if not results:
        raise ValueError(
            f"A has d_in {sae_a.d_in} and B {sae_b.d_in}: decoder cosine needs one width; pass proteins (--fasta) for"
            " activation correlation"
        )
    return results


def untrained_like(sae, seed: int = 12345):
    """The chance level of a match: an untrained SAE of B's shape with B's input normalisation and
    recorded model and layer (a random dictionary on the same activations). On a model whose
    activations are mostly residue identity, activation correlation against it is high too: any
    TopK latent of such activations fires on a few residue types."""
    from esmsae.sae.model import SAE

    rnd = SAE(sae.cfg, sae.d_in, seed=seed).eval()
    with torch.no_grad():
        rnd.norm_mean.copy_(sae.norm_mean)
        rnd.norm_scale.copy_(sae.norm_scale)
    rnd.meta = getattr(sae, "meta", {})
    return rnd


def with_chance(results: list[MatchResult], chance: list[MatchResult], threshold: float = 0.7, live=None) -> list[dict]:
    """Each method's summary next to its chance level (the same method against :func:`untrained_like`).
    ``live`` (bool per feature of A) adds the match rate over the features that fire."""
    ch = {c.method: c for c in chance}
    out = []
    for r in results:
        row = {**r.summary(threshold)}
        if live is not None:
            row["match_rate_live"] = live_rate(r, live, threshold)
        if r.method in ch:
            c = ch[r.method]
            row["chance_match_rate"] = c.summary(threshold)["match_rate"]
            if live is not None:
                row["chance_match_rate_live"] = live_rate(c, live, threshold)
        out.append(row)
    return out


def live_rate(r: MatchResult, live, threshold: float = 0.7) -> float:
    """Match rate over the features of A that fire (a dead feature has no counterpart by definition)."""
    live = np.asarray(live, bool)
    first = r.pairs[r.pairs["rank"] == 0].set_index("feature_a")["score"].reindex(range(len(live))).fillna(0.0)
    return float((first.to_numpy()[live] >= threshold).mean()) if live.any() else 0.0


def store_matches(
    index_path, results: list[MatchResult], other: str, threshold: float = 0.7, summaries: list[dict] | None = None
) -> int:
    """Store the pairs for A's feature index (``feature_matches``: feature, rank, other_sae,
    other_feature, score, method, and per pair whether several features of B map to this one, the
    feature-splitting flag) and one row per method with the match rate next to its chance level,
    replacing earlier rows for the same ``other`` SAE. They go to the index's matches side file
    (:mod:`esmsae.index.matches`), so a rebuild of the index keeps them. Returns the pairs written."""
    from esmsae.index import matches

    frames = []
    for r in results:
        counts = np.bincount(r.best_a_in_b[r.best_score_b >= threshold], minlength=int(r.pairs["feature_a"].max()) + 1)
        frames.append(
            r.pairs.rename(columns={"feature_a": "feature", "feature_b": "other_feature"}).assign(
                other_sae=other, method=r.method, split=lambda d: counts[d["feature"].to_numpy()] >= 2
            )
        )
    rows = summaries or [r.summary(threshold) for r in results]
    sm = pd.DataFrame([{"other_sae": other, **{c: x.get(c) for c in matches.SUMMARY_COLUMNS[1:]}} for x in rows])
    return matches.write(index_path, other, pd.concat(frames), sm)
