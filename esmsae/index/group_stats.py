"""Group enrichment of features: log odds, one-sided Fisher's exact test, Benjamini-Hochberg FDR."""
from __future__ import annotations

import numpy as np


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, float)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    q = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def usage_frame(group_names: list[str], n_fire_GF: np.ndarray, sum_max_GF: np.ndarray, n_prot_G: np.ndarray):
    """The long group x feature usage table of the index and the app (one row per pair): proteins,
    firing proteins, fraction, mean per-protein max activation, log odds, Fisher p, BH q."""
    import pandas as pd

    enr = enrichment(n_fire_GF, n_prot_G)
    G, F = n_fire_GF.shape
    size = np.maximum(n_prot_G[:, None], 1)
    return pd.DataFrame({"grp": np.repeat(group_names, F), "feature": np.tile(np.arange(F), G), "n_proteins": np.repeat(n_prot_G, F),
                         "n_fire": n_fire_GF.ravel(), "frac": (n_fire_GF / size).ravel(), "mean_act": (sum_max_GF / size).ravel(),
                         "log_odds": enr["log_odds"].ravel(), "p": enr["p"].ravel(), "q": enr["q"].ravel()}), enr


def enrichment(n_fire_GF: np.ndarray, n_prot_G: np.ndarray) -> dict[str, np.ndarray]:
    """Feature enrichment of each group against all other groups of the grouping.

    Per (group, feature) 2x2 table: fires / does not fire x in group / in the others.
    Log odds ratio with the Haldane-Anscombe +0.5 correction; one-sided Fisher's exact
    test (hypergeometric upper tail, P(X >= a)); Benjamini-Hochberg FDR over all tests.
    """
    from scipy.stats import hypergeom

    N = n_prot_G.sum()
    K_F = n_fire_GF.sum(0)
    a = n_fire_GF.astype(float)
    b = n_prot_G[:, None] - a
    c = K_F[None, :] - a
    d = (N - n_prot_G)[:, None] - c
    log_odds = np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    p = hypergeom.sf(a - 1, N, np.broadcast_to(K_F, a.shape), np.broadcast_to(n_prot_G[:, None], a.shape))
    p = np.where(a > 0, p, 1.0)
    q = benjamini_hochberg(p.ravel()).reshape(p.shape)
    return {"log_odds": log_odds, "p": p, "q": q}
