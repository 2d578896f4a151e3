"""Group enrichment of features, controlled for protein length.

Whether a feature "fires at least once" on a protein grows with the protein's length
(Spearman 0.75 on the demo), and groups differ in length (median Eukaryota 450, Archaea 254
residues), so an unstratified test calls length differences enrichment. The default test is
Cochran-Mantel-Haenszel over protein-length bins (Mantel & Haenszel 1959): per bin a 2x2
table (fires or not x in the group or in the others), the Mantel-Haenszel common odds ratio
as effect size and a one-sided CMH z test; Fisher's exact test (unstratified) is kept as an
option. Benjamini-Hochberg FDR over every test of a grouping; groups under a minimum size are
listed but not tested.
"""
from __future__ import annotations

import numpy as np

TESTS = ("cmh", "fisher")


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


def length_edges(lengths: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner bin edges at length quantiles (ties collapse bins)."""
    if n_bins <= 1 or len(lengths) == 0:
        return np.zeros(0)
    return np.unique(np.quantile(np.asarray(lengths, float), np.linspace(0, 1, n_bins + 1)[1:-1]))


def length_bin(length: int, edges: np.ndarray) -> int:
    return int(np.searchsorted(edges, length, side="right"))


def usage_frame(group_names: list[str], n_fire_GBF: np.ndarray, sum_max_GF: np.ndarray, n_prot_GB: np.ndarray,
                test: str = "cmh", min_group_size: int = 1):
    """The long group x feature usage table of the index and the app (one row per pair): proteins,
    firing proteins, fraction, mean per-protein max activation, log odds, p, BH q, tested."""
    import pandas as pd

    n_fire_GF = n_fire_GBF.sum(1)
    n_prot_G = n_prot_GB.sum(1)
    enr = enrichment(n_fire_GBF, n_prot_GB, test, min_group_size)
    G, F = n_fire_GF.shape
    size = np.maximum(n_prot_G[:, None], 1)
    return (
        pd.DataFrame(
            {
                "grp": np.repeat(group_names, F),
                "feature": np.tile(np.arange(F), G),
                "n_proteins": np.repeat(n_prot_G, F),
                "n_fire": n_fire_GF.ravel(),
                "frac": (n_fire_GF / size).ravel(),
                "mean_act": (sum_max_GF / size).ravel(),
                "log_odds": enr["log_odds"].ravel(),
                "p": enr["p"].ravel(),
                "q": enr["q"].ravel(),
                "tested": np.repeat(enr["tested"], F),
            }
        ),
        enr,
    )


def enrichment(
    n_fire_GBF: np.ndarray, n_prot_GB: np.ndarray, test: str = "cmh", min_group_size: int = 1
) -> dict[str, np.ndarray]:
    """Enrichment of each feature in each group against all other groups of the grouping.

    ``n_fire_GBF`` [G, B, F]: proteins of group g in length bin b on which feature f fires;
    ``n_prot_GB`` [G, B]: proteins of group g in bin b. ``cmh``: stratified by bin; ``fisher``:
    the bins summed (one-sided Fisher's exact, hypergeometric upper tail P(X >= a), log odds with
    the Haldane-Anscombe +0.5 correction). Untested groups (fewer than ``min_group_size``
    proteins) get p = 1 and are left out of the FDR family.
    """
    if test not in TESTS:
        raise ValueError(f"group test {test!r}: choose one of {TESTS}")
    if n_fire_GBF.ndim == 2:  # [G, F]: one length bin
        n_fire_GBF, n_prot_GB = n_fire_GBF[:, None, :], np.asarray(n_prot_GB)[:, None]
    a = n_fire_GBF.astype(float)  # [G, B, F]
    n1 = n_prot_GB.astype(float)[:, :, None]  # in group
    N = n1.sum(0, keepdims=True)  # all groups, per bin
    m1 = a.sum(0, keepdims=True)  # firing, per bin
    tested = n_prot_GB.sum(1) >= min_group_size
    if test == "fisher":
        from scipy.stats import hypergeom

        A, n1s, Ns, m1s = a.sum(1), n1.sum(1), N.sum(1), m1.sum(1)
        b, c = n1s - A, m1s - A
        d = Ns - n1s - c
        log_odds = np.log((A + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
        p = hypergeom.sf(
            A - 1, np.broadcast_to(Ns, A.shape), np.broadcast_to(m1s, A.shape), np.broadcast_to(n1s, A.shape)
        )
        p = np.where(A > 0, p, 1.0)
    else:
        from scipy.stats import norm

        b, c = n1 - a, m1 - a
        d = N - n1 - c
        Nn = np.maximum(N, 1)
        # Mantel-Haenszel common odds ratio, +0.5 in each cell where a table has a zero cell
        zero = (a == 0) | (b == 0) | (c == 0) | (d == 0)
        aa, bb, cc, dd = (x + 0.5 * zero for x in (a, b, c, d))
        num = (aa * dd / (Nn + 2.0 * zero)).sum(1)
        den = (bb * cc / (Nn + 2.0 * zero)).sum(1)
        log_odds = np.log(np.maximum(num, 1e-300) / np.maximum(den, 1e-300))
        # one-sided CMH test of the observed firing count in the group against its expectation
        expect = (n1 * m1 / Nn).sum(1)
        var = (n1 * (N - n1) * m1 * (N - m1) / np.maximum(N * N * (N - 1), 1)).sum(1)
        z = (a.sum(1) - expect) / np.sqrt(np.maximum(var, 1e-300))
        p = np.where(var > 0, norm.sf(z), 1.0)
    p = np.where(tested[:, None], p, 1.0)
    q = np.ones_like(p)
    if tested.any():
        q[tested] = benjamini_hochberg(p[tested].ravel()).reshape(p[tested].shape)
    return {"log_odds": log_odds, "p": p, "q": q, "tested": tested}


def top_groups(
    group_names: list[str], enr: dict[str, np.ndarray], fires_F: np.ndarray, q_max: float = 0.05
) -> np.ndarray:
    """Each feature's most enriched group among tested groups with q < ``q_max`` and log odds
    above 0; "" where no group qualifies (shown as none, not as the least bad group). Its q:
    :func:`top_group_q`."""
    ok = enr["tested"][:, None] & (enr["q"] < q_max) & (enr["log_odds"] > 0)
    score = np.where(ok, enr["log_odds"], -np.inf)
    best = score.argmax(0)
    has = np.isfinite(score.max(0)) & (fires_F > 0)
    return np.where(has, np.array(group_names, dtype=object)[best], "")


def top_group_q(group_names: list[str], enr: dict[str, np.ndarray], top_F: np.ndarray) -> np.ndarray:
    """q of each feature's top group (NaN where it has none)."""
    gi = {g: i for i, g in enumerate(group_names)}
    out = np.full(len(top_F), np.nan)
    for f, g in enumerate(top_F):
        if g:
            out[f] = enr["q"][gi[g], f]
    return out
