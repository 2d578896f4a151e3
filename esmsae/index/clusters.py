"""Embedding clusters as a grouping (esm-sae's workflow: cluster mean-pooled embeddings, then compare
feature usage across the clusters), each cluster described by what it holds.

The index's streaming pass already runs the LM over every protein, so the mean-pooled vector of the
SAE's layer is a by-product: :class:`ClusterSpill` keeps it (fp16, on disk) with the protein's length
bin, amino-acid counts and the features counted for it. After the pass, scikit-learn's
``MiniBatchKMeans`` (seeded) clusters the vectors (standardised per dimension), and the cluster
labels become the grouping ``embedding cluster``: the same length-stratified CMH test, minimum group
size, composition control and cap as every grouping. :func:`cluster_profiles` describes each cluster:
size, lengths, kingdom shares, top organisms and protein names, and the concepts of its most
enriched features.
"""
from __future__ import annotations

import json
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

GROUPING = "embedding cluster"


class ClusterSpill:
    """Per clustered protein, streamed to scratch files: pidx, length bin, amino-acid counts, pooled
    vector (fp16), and the features counted for it with their per-protein max. :meth:`collect` reads it
    back as :class:`ClusterData`."""

    def __init__(self, folder: Path, d: int):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.d = d
        self.files = {k: open(folder / f"cluster_{k}.bin", "w+b") for k in ("vec", "feat", "vmax")}
        self.pidx, self.lenbin, self.n, self.aa = array("q"), array("i"), array("q"), array("i")

    def put(
        self,
        pidx: int,
        lenbin: int,
        aa_counts_20: np.ndarray,
        pooled_D: np.ndarray,
        feats: np.ndarray,
        vmax: np.ndarray,
    ) -> None:
        self.files["vec"].write(np.asarray(pooled_D, np.float16).tobytes())
        self.files["feat"].write(np.asarray(feats, np.int32).tobytes())
        self.files["vmax"].write(np.asarray(vmax, np.float32).tobytes())
        self.pidx.append(pidx)
        self.lenbin.append(lenbin)
        self.n.append(len(feats))
        self.aa.extend(np.asarray(aa_counts_20, np.int64).tolist())

    def _all(self, key: str, dtype) -> np.ndarray:
        f = self.files[key]
        f.flush()
        f.seek(0)
        return np.frombuffer(f.read(), dtype)

    def collect(self) -> "ClusterData":
        P = len(self.pidx)
        return ClusterData(
            np.asarray(self.pidx, np.int64),
            np.asarray(self.lenbin, np.int32),
            np.asarray(self.n, np.int64),
            np.asarray(self.aa, np.int32).reshape(P, 20),
            self._all("vec", np.float16).reshape(P, self.d),
            self._all("feat", np.int32),
            self._all("vmax", np.float32),
        ).sorted()

    def close(self) -> None:
        for f in self.files.values():
            if not f.closed:
                f.close()


class ClusterData:
    """The clustered proteins in pidx order (so the clustering does not depend on the batch order or on
    how batches were dealt to ranks). Offers the interface composition_counts reads (``arrays``, ``read``)."""

    def __init__(self, pidx, lenbin, n, aa, vec, feat, vmax, labels=None):
        self.pidx, self.lenbin, self.n, self.aa, self.vec, self.feat, self.vmax = pidx, lenbin, n, aa, vec, feat, vmax
        self.labels = labels

    def __len__(self) -> int:
        return len(self.pidx)

    def sorted(self) -> "ClusterData":
        o = np.argsort(self.pidx, kind="stable")
        off = np.r_[0, np.cumsum(self.n)]
        take = np.concatenate([np.arange(off[i], off[i + 1]) for i in o]) if len(o) else np.zeros(0, np.int64)
        return ClusterData(
            self.pidx[o], self.lenbin[o], self.n[o], self.aa[o], self.vec[o], self.feat[take], self.vmax[take]
        )

    @classmethod
    def merge(cls, parts: list["ClusterData"]) -> "ClusterData":
        cat = lambda k: np.concatenate([getattr(p, k) for p in parts])  # noqa: E731
        return cls(*(cat(k) for k in ("pidx", "lenbin", "n", "aa", "vec", "feat", "vmax"))).sorted()

    def save(self, path: Path) -> None:
        np.savez(
            path, pidx=self.pidx, lenbin=self.lenbin, n=self.n, aa=self.aa, vec=self.vec, feat=self.feat, vmax=self.vmax
        )

    @classmethod
    def load(cls, path: Path) -> "ClusterData":
        with np.load(path) as z:
            return cls(*(z[k] for k in ("pidx", "lenbin", "n", "aa", "vec", "feat", "vmax")))

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.feat[start:stop]

    def read_vmax(self, start: int, stop: int) -> np.ndarray:
        return self.vmax[start:stop]

    def arrays(self):
        labels = self.labels if self.labels is not None else np.full(len(self), -1, np.int32)
        return self.lenbin, self.n, labels.astype(np.int32).reshape(-1, 1), self.aa


def cluster_vectors(X_PD: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """MiniBatchKMeans labels [P] of the pooled vectors, standardised per dimension; clusters are then
    renumbered by size (cluster 0 the largest), so the numbering does not depend on k-means' order."""
    from sklearn.cluster import MiniBatchKMeans

    X = np.asarray(X_PD, np.float32)
    if len(X) < k:
        raise ValueError(f"--cluster-proteins {k}: only {len(X)} proteins to cluster")
    X = (X - X.mean(0)) / np.maximum(X.std(0), 1e-6)
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096, max_iter=200)
    lab = km.fit_predict(X)
    sizes = np.bincount(lab, minlength=k)
    order = np.lexsort((np.arange(k), -sizes))  # largest first, ties by k-means index
    remap = np.empty(k, np.int64)
    remap[order] = np.arange(k)
    return remap[lab].astype(np.int32)


def cluster_counts(spill: "ClusterData", k: int, n_len_bins: int, F: int, chunk: int = 4096):
    """(n_fire [K, B, F], sum_max [K, F], n_prot [K, B]) of the clusters, from the spill."""
    lenbin, n, labels, _ = spill.arrays()
    labels = labels[:, 0].astype(np.int64)
    fire = np.zeros(k * n_len_bins * F, np.int64)
    smax = np.zeros(k * F, np.float64)
    prot = np.zeros((k, n_len_bins), np.int64)
    np.add.at(prot, (labels, lenbin), 1)
    off = np.r_[0, np.cumsum(n)]
    for lo in range(0, len(n), chunk):
        hi = min(len(n), lo + chunk)
        f = spill.read(int(off[lo]), int(off[hi])).astype(np.int64)
        v = spill.read_vmax(int(off[lo]), int(off[hi])).astype(np.float64)
        p = np.repeat(np.arange(lo, hi), n[lo:hi])
        fire += np.bincount((labels[p] * n_len_bins + lenbin[p]) * F + f, minlength=k * n_len_bins * F)
        smax += np.bincount(labels[p] * F + f, weights=v, minlength=k * F)
    return fire.reshape(k, n_len_bins, F), smax.reshape(k, F), prot


def cluster_names(k: int) -> list[str]:
    return [f"cluster {i}" for i in range(k)]


def cluster_profiles(labels_P: np.ndarray, proteins: pd.DataFrame, usage: pd.DataFrame, features: pd.DataFrame, k: int,
                     top: int = 5) -> pd.DataFrame:
    """One row per cluster: size, length quartiles, kingdom shares, top organisms and protein names (with
    counts), and, descriptively, the features it uses most over the rest (log odds > 1; never tested: the
    clusters are of the LM states the SAE encodes) with the concepts those features match.
    ``proteins``: the clustered proteins in spill order (columns length, kingdom, organism, description)."""
    from esmsae.index.describe import _name
    from esmsae.index.labels import is_catch_all

    rows = []
    matched = features.set_index("feature")
    for c in range(k):
        m = proteins[labels_P == c]
        n = len(m)
        kd = Counter(x for x in m["kingdom"] if x)
        org = Counter(x for x in m["organism"] if x)
        names = Counter(x for x in (_name(d) for d in m["description"]) if x)
        u = usage[(usage.grp == f"cluster {c}") & (usage.log_odds > 1)]
        u = u.sort_values("log_odds", ascending=False)
        concepts = []
        for f in u.feature.tolist():
            bc = matched.at[f, "best_concept"] if f in matched.index else ""
            if bc and bool(matched.at[f, "matches_concept"]) and not is_catch_all(bc):  # "any domain" describes nothing
                concepts.append(f"{matched.at[f, 'best_concept']} (feature {f})")
            if len(concepts) >= 3:
                break
        q = np.percentile(m["length"], [25, 50, 75]) if n else [np.nan] * 3
        rows.append(
            {
                "cluster": f"cluster {c}",
                "n_proteins": n,
                "length_q1": float(q[0]),
                "length_median": float(q[1]),
                "length_q3": float(q[2]),
                "kingdoms": json.dumps({a: round(b / n, 3) for a, b in kd.most_common()}) if n else "{}",
                "no_kingdom": int(n - sum(kd.values())),
                "top_organisms": "; ".join(f"{a} ({b})" for a, b in org.most_common(top)),
                "top_protein_names": "; ".join(f"{a} ({b})" for a, b in names.most_common(top)),
                "n_enriched_features": int(len(u)),
                "top_enriched_features": ", ".join(str(f) for f in u.feature.head(top)),
                "enriched_concepts": "; ".join(concepts),
            }
        )
    return pd.DataFrame(rows)
