"""Table writers and schema of the index: example tables as Arrow list columns, activation
quantiles from histograms, the feature map, and where user labels live. No torch here: the
app's read path imports :func:`labels_path`."""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from esmsae.index.streaming import Reservoir, TopN, TrackSpill

HIST_EDGES = np.concatenate([[0.0], np.logspace(-4, 4, 161)])  # activation histogram bin edges (20 per decade)

SCHEMA = {
    "meta": "key VARCHAR, value VARCHAR",
    "proteins": (
        "pidx INTEGER, id VARCHAR, description VARCHAR, length INTEGER, sequence VARCHAR, organism VARCHAR, taxid"
        " BIGINT, kingdom VARCHAR, lineage VARCHAR, source VARCHAR, label_sources VARCHAR, structure VARCHAR, chain"
        " VARCHAR, n_active_features INTEGER"
    ),
}


# The index file's layout. Bump it when a table or column changes meaning or goes away; the reader
# refuses another version with a message saying to rebuild (no compatibility branches for old files).
FORMAT_VERSION = 1


def check_format(meta: dict, path: str | os.PathLike) -> None:
    """Raise a clear error when an index file was written in another format than this esmsae reads."""
    got = meta.get("format_version")
    if got != FORMAT_VERSION:
        raise ValueError(
            f"{path} is a feature index in format {got if got is not None else '(unversioned)'}, and this esmsae reads"
            f" format {FORMAT_VERSION}: rebuild it with `python -m esmsae index` (labels and matches beside it are"
            " kept)"
        )


def labels_path(index_path: str | os.PathLike) -> Path:
    """User-written feature labels: a DuckDB file beside the index (never rebuilt)."""
    p = Path(index_path)
    return p.with_name(p.stem + ".labels.duckdb")


def matches_path(index_path: str | os.PathLike) -> Path:
    """Cross-SAE matches (``match --index``): a DuckDB file beside the index, kept by a rebuild."""
    p = Path(index_path)
    return p.with_name(p.stem + ".matches.duckdb")


def hist_quantiles(hist_FH: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles of each feature's non-zero activations from its histogram (geometric bin midpoints)."""
    mids = np.sqrt(np.maximum(HIST_EDGES[:-1], 1e-4) * HIST_EDGES[1:])
    cum = np.cumsum(hist_FH, 1)
    tot = cum[:, -1:]
    out = np.zeros((hist_FH.shape[0], len(qs)), np.float32)
    for j, q in enumerate(qs):
        b = (cum < q * tot).sum(1)
        out[:, j] = np.where(tot[:, 0] > 0, mids[np.minimum(b, len(mids) - 1)], 0.0)
    return out


UMAP_MIN_FEATURES = 256  # below this a 15-neighbour UMAP is mostly noise: the map is the first two PCs


def feature_map(W_dec_FD: np.ndarray, seed: int, use_umap: bool) -> tuple[np.ndarray, np.ndarray]:
    """2-D map of decoder directions (cosine UMAP; for fewer than :data:`UMAP_MIN_FEATURES` features, where
    15 neighbours are a large share of all points, the first two principal directions, which also spares
    numba's ~15 s compile of UMAP for a small SAE) and k-means clusters of the directions."""
    from sklearn.cluster import KMeans

    F = W_dec_FD.shape[0]
    Wn = W_dec_FD / np.maximum(np.linalg.norm(W_dec_FD, axis=1, keepdims=True), 1e-8)
    n_clusters = int(min(40, max(2, F // 64)))
    cluster = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit_predict(Wn) if F >= 4 else np.zeros(F, int)
    if use_umap and F >= UMAP_MIN_FEATURES:
        import umap

        xy = umap.UMAP(
            n_neighbors=min(15, F - 1), min_dist=0.1, metric="cosine", random_state=seed, n_jobs=1
        ).fit_transform(Wn)
    else:  # PCA fallback: the first two principal directions
        X = Wn - Wn.mean(0)
        _, _, Vt = np.linalg.svd(X, full_matrices=False)
        xy = X @ Vt[:2].T
    return np.asarray(xy, np.float32), cluster.astype(np.int32)


def track_table(cols: dict[str, list], tracks: list[tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    """Scalar columns plus the sparse tracks as Arrow list columns (INTEGER[] / DOUBLE[]).

    Arrow keeps each track as a slice of one flat array (4 or 8 bytes a value); the same
    tracks as Python lists in a DataFrame took 32+ bytes a value and set the build's peak
    memory (bench/index_scaling.py).
    """
    lens = np.fromiter((len(p) for p, _ in tracks), np.int64, len(tracks))
    offsets = pa.array(np.r_[0, np.cumsum(lens)].astype(np.int32))
    flat_pos = np.concatenate([p for p, _ in tracks]).astype(np.int32) if tracks else np.zeros(0, np.int32)
    flat_val = np.concatenate([v for _, v in tracks]).astype(np.float64) if tracks else np.zeros(0, np.float64)
    floats = ("max_act", "bin_lo", "bin_hi")
    return pa.table({**{k: pa.array(v, type=pa.float64() if k in floats else pa.int64()) for k, v in cols.items()},
                     "positions": pa.ListArray.from_arrays(offsets, pa.array(flat_pos)),
                     "values": pa.ListArray.from_arrays(offsets, pa.array(flat_val))})


def top_frame(top: TopN, spill: TrackSpill, lo: int, hi: int) -> pa.Table:
    cols: dict[str, list] = {"feature": [], "rank": [], "pidx": [], "max_act": [], "max_pos": []}
    tracks = []
    for f in range(lo, hi):
        for rank, (slot, (pidx, off, n)) in enumerate(top.ranked(f)):
            pos, vals = spill.get(off, n)
            for k, v in zip(cols, (f, rank, pidx, float(top.val_FN[f, slot]), int(pos[vals.argmax()]))):
                cols[k].append(v)
            tracks.append((pos, vals))
    return track_table(cols, tracks)


def quantile_frame(
    res: Reservoir, spill: TrackSpill, max_F: np.ndarray, n_bins: int, per_bin: int, lo: int, hi: int
) -> pa.Table:
    cols: dict[str, list] = {
        "feature": [],
        "bin": [],
        "bin_lo": [],
        "bin_hi": [],
        "pidx": [],
        "max_act": [],
        "max_pos": [],
    }
    tracks = []
    for f in range(lo, hi):
        slots = res.items[f]
        if not slots or max_F[f] <= 0:
            continue
        by_bin: dict[int, list] = defaultdict(list)
        for pidx, vmax, off, n in slots.values():
            b = min(int(vmax / max_F[f] * n_bins), n_bins - 1)
            by_bin[b].append((pidx, vmax, off, n))
        for b, lst in by_bin.items():
            for pidx, vmax, off, n in sorted(lst, key=lambda x: (-x[1], x[0]))[:per_bin]:
                pos, vals = spill.get(off, n)
                row = (
                    f,
                    b,
                    float(b / n_bins * max_F[f]),
                    float((b + 1) / n_bins * max_F[f]),
                    pidx,
                    vmax,
                    int(pos[vals.argmax()]),
                )
                for k, v in zip(cols, row):
                    cols[k].append(v)
                tracks.append((pos, vals))
    return track_table(cols, tracks)
