"""Streaming accumulators of the index build: bounded memory whatever the number of proteins.

A running top-N and a uniform sample per feature (their example tracks spilled to a scratch
file), the sparse codes of labelled proteins in a CSR file for the concept pass, and the glibc
heap trim."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

# Sparse (residue, latent) pairs are packed into one int64 key: residue << 20 | latent.
LATENT_BITS = 20
MAX_LATENTS = 1 << LATENT_BITS


NO_PIDX = np.iinfo(np.int64).max


def _merge_slots(U: np.ndarray, f_C: np.ndarray, kept: tuple[np.ndarray, ...], cand: tuple[np.ndarray, ...]):
    """Merge candidates into per-feature slots in one sort. Each touched feature U[u] keeps the n
    best of its n slots (``kept``: sort keys [len(U), n], an empty slot holding the worst key) and
    its candidates (``cand``: the same keys per candidate, features ``f_C``), best = smallest
    keys, compared in order. Returns the winning candidates, their features and the slots they
    take (those of the entries they push out: as many per feature)."""
    n = kept[0].shape[1]
    all_f = np.r_[np.repeat(U, n), f_C]
    cols = [np.r_[k.ravel(), c] for k, c in zip(kept, cand)]
    slot = np.r_[np.tile(np.arange(n), len(U)), np.full(len(f_C), -1)]  # -1: a candidate
    order = np.lexsort((*cols[::-1], all_f))
    f_sorted = all_f[order]
    keep = np.arange(len(order)) - np.searchsorted(f_sorted, f_sorted) < n  # rank within the feature
    won = order[keep & (slot[order] < 0)]  # grouped by feature, like freed
    freed = order[~keep & (slot[order] >= 0)]
    return won - len(U) * n, all_f[won], slot[freed]


class TopN:
    """Per-feature running top-N of (protein max activation, protein, sparse track).

    The order is total: activation descending, then protein index ascending. So the top-N does
    not depend on the order proteins arrive in, and the top-N of a union is the top-N of the
    parts' top-Ns (what merges the ranks of a distributed build exactly)."""

    def __init__(self, n_features: int, n: int):
        self.val_FN = np.full((n_features, n), -np.inf, dtype=np.float32)
        self.min_F = np.full(n_features, -np.inf, dtype=np.float32)  # val_FN.min(1), kept current: the entry bar
        self.pid_FN = np.full((n_features, n), NO_PIDX, dtype=np.int64)
        self.items: list[dict[int, tuple]] = [dict() for _ in range(n_features)]  # slot -> (pidx, track offset, length)

    def _worst(self, f: int) -> int:
        """The slot that leaves first: lowest activation, then highest protein index."""
        v = self.val_FN[f]
        ties = np.flatnonzero(v == v.min())
        return int(ties[np.argmax(self.pid_FN[f, ties])]) if len(ties) > 1 else int(ties[0])

    def offer_one(self, f: int, val: float, pidx: int, put: Callable[[], tuple[int, int]]) -> bool:
        slot = self._worst(f)
        worst_v, worst_p = self.val_FN[f, slot], self.pid_FN[f, slot]
        if np.float32(val) < worst_v or (np.float32(val) == worst_v and pidx >= worst_p):
            return False
        self.val_FN[f, slot], self.pid_FN[f, slot] = val, pidx
        self.min_F[f] = self.val_FN[f].min()
        self.items[f][slot] = (pidx, *put())
        return True

    def offer_batch(
        self,
        f_Q: np.ndarray,
        v_Q: np.ndarray,
        p_Q: np.ndarray,
        tracks: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    ) -> None:
        """A batch's (feature, max activation, protein) pairs at once; ``tracks(q)`` spills the
        tracks of pairs q and returns (offsets, lengths). Each touched feature keeps the top N of
        its kept entries and its candidates under the total order, in one sort: the result is
        what offering the pairs one at a time gives, in any order, without a Python step per
        pair (one offer_one per pair was 5-10% of the streaming pass, bench/index_scaling.py)."""
        v_Q = np.asarray(v_Q, np.float32)
        cand = np.flatnonzero(v_Q >= self.min_F[f_Q])  # a tie on the value can still win on pidx
        if not len(cand):
            return
        U = np.unique(f_Q[cand])
        wc, fw, sw = _merge_slots(U, f_Q[cand], (-self.val_FN[U], self.pid_FN[U]), (-v_Q[cand], p_Q[cand]))
        if not len(wc):
            return
        self.val_FN[fw, sw], self.pid_FN[fw, sw] = v_Q[cand][wc], p_Q[cand][wc]
        self.min_F[U] = self.val_FN[U].min(1)
        off, n = tracks(cand[wc])
        for f, s_, p, o, k in zip(fw.tolist(), sw.tolist(), p_Q[cand][wc].tolist(), off.tolist(), n.tolist()):
            self.items[f][s_] = (p, o, k)

    def ranked(self, f: int) -> list[tuple[int, tuple]]:
        """(slot, item) of a feature, best first (activation desc, protein asc)."""
        return sorted(self.items[f].items(), key=lambda kv: (-self.val_FN[f, kv[0]], kv[1][0]))


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele et al. 2014): a well-spread 64-bit hash of a 64-bit key."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class Reservoir:
    """Uniform sample of R firing proteins per feature, without replacement: the R proteins with
    the smallest keyed hash of (seed, feature, protein). Unlike Vitter's sequential Algorithm R,
    the sample depends on neither the order proteins arrive in nor how they are split over
    processes: the R smallest keys of a union are the R smallest of the parts' R smallest
    (bottom-k sampling; Cohen & Kaplan 2007)."""

    def __init__(self, n_features: int, r: int, seed: int):
        self.r, self.seed = r, seed
        self.key_FR = np.full((n_features, r), np.iinfo(np.uint64).max, dtype=np.uint64)
        self.max_F = self.key_FR.max(1)  # kept current: the entry bar
        self.items: list[dict[int, tuple]] = [dict() for _ in range(n_features)]

    def keys(self, f_P: np.ndarray, pidx: int | np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return _mix64(
                _mix64(np.uint64(self.seed) ^ (np.asarray(f_P, np.uint64) << np.uint64(32)))
                ^ np.asarray(pidx).astype(np.uint64)
            )

    def offer_one(self, f: int, key: np.uint64, pidx: int, vmax: float, put: Callable[[], tuple[int, int]]) -> bool:
        slot = int(np.argmax(self.key_FR[f]))
        if key >= self.key_FR[f, slot]:
            return False
        self.key_FR[f, slot] = key
        self.max_F[f] = self.key_FR[f].max()
        self.items[f][slot] = (pidx, float(vmax), *put())
        return True

    def offer_batch(
        self,
        f_Q: np.ndarray,
        v_Q: np.ndarray,
        p_Q: np.ndarray,
        tracks: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    ) -> None:
        """A batch's (feature, max activation, protein) pairs at once (see TopN.offer_batch):
        each touched feature keeps the R smallest keys of its kept entries and its candidates."""
        k_Q = self.keys(f_Q, p_Q)
        cand = np.flatnonzero(k_Q < self.max_F[f_Q])
        if not len(cand):
            return
        U = np.unique(f_Q[cand])
        wc, fw, sw = _merge_slots(U, f_Q[cand], (self.key_FR[U],), (k_Q[cand],))
        if not len(wc):
            return
        q = cand[wc]
        self.key_FR[fw, sw] = k_Q[q]
        self.max_F[U] = self.key_FR[U].max(1)
        off, n = tracks(q)
        for f, s_, p, v, o, k in zip(
            fw.tolist(),
            sw.tolist(),
            np.asarray(p_Q)[q].tolist(),
            np.asarray(v_Q, np.float64)[q].tolist(),
            off.tolist(),
            n.tolist(),
        ):
            self.items[f][s_] = (p, v, o, k)


class TrackSpill:
    """Append-only file of the sparse tracks (positions int32, then values float32) that the
    top-N and the reservoir keep; they hold only (offset, length). Held in memory, the tracks
    of all example slots (features x (top_n + reservoir), 614k with 10,240 latents) grow as the
    slots fill and as the strongest examples drift to proteins with longer tracks; on disk,
    memory stays at a few integers per slot. The file grows only with the accepted offers,
    O(slots x log N)."""

    def __init__(self, folder: Path):
        self.path = folder / "tracks.bin"
        self.fh = open(
            self.path, "w+b"
        )  # read back through the same handle: the file may be unlinked (see scratch_files)
        self.n_words = 0
        self.words: np.ndarray | None = None

    def put(self, pos: np.ndarray, vals: np.ndarray) -> tuple[int, int]:
        off, n = self.n_words, len(pos)
        self.fh.write(pos.astype(np.int32).tobytes())
        self.fh.write(vals.astype(np.float32).tobytes())
        self.n_words += 2 * n
        return off, n

    def finish(self) -> None:
        self.fh.flush()
        self.words = np.memmap(self.fh, dtype=np.int32, mode="r") if self.n_words else np.zeros(0, np.int32)

    def put_many(self, start_Q: np.ndarray, end_Q: np.ndarray, pos_R: np.ndarray, val_R: np.ndarray) -> np.ndarray:
        """Tracks q = pos_R / val_R[start_Q[q]:end_Q[q]] in one write, each laid out as put() lays
        it out; returns their offsets."""
        n_Q = (end_Q - start_Q).astype(np.int64)
        excl_Q = np.cumsum(n_Q) - n_Q  # where track q starts among the gathered residues
        tot = int(n_Q.sum())
        j = np.arange(tot) - np.repeat(excl_Q, n_Q)  # residue j of its track
        src = np.repeat(start_Q, n_Q) + j
        dst = np.repeat(2 * excl_Q, n_Q) + j
        buf = np.empty(2 * tot, np.int32)
        buf[dst] = pos_R[src]
        buf[dst + np.repeat(n_Q, n_Q)] = val_R[src].astype(np.float32).view(np.int32)
        self.fh.write(buf.tobytes())
        off_Q = self.n_words + 2 * excl_Q
        self.n_words += 2 * tot
        return off_Q

    def get(self, off: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.words is not None, "finish() first"
        return self.words[off:off + n], self.words[off + n:off + 2 * n].view(np.float32)


class CSRWriter:
    """Sparse codes of labelled proteins on disk (row pointers, feature ids, values)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.f_idx = open(folder / "idx.bin", "w+b")  # read back through the same handles (see scratch_files)
        self.f_val = open(folder / "val.bin", "w+b")
        self.offsets = [0]
        self.pidx: list[int] = []

    def add(self, pidx: int, rows_R: np.ndarray, idx_R: np.ndarray, val_R: np.ndarray) -> None:
        # stored per protein as (residue, feature, value) triples: residue packed in the high bits
        key = rows_R.astype(np.int64) * MAX_LATENTS + idx_R.astype(np.int64)
        key.tofile(self.f_idx)
        val_R.astype(np.float32).tofile(self.f_val)
        self.offsets.append(self.offsets[-1] + len(key))
        self.pidx.append(pidx)

    def close(self) -> None:
        """Writing is finished (the handles stay open for :meth:`read`; :meth:`release` closes them)."""
        self.f_idx.flush()
        self.f_val.flush()

    def release(self) -> None:
        self.f_idx.close()
        self.f_val.close()

    def read(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(protein, keys, values) in written order, one protein in memory at a time."""
        fi, fv = self.f_idx, self.f_val
        fi.seek(0)
        fv.seek(0)
        for j, pidx in enumerate(self.pidx):
            n = self.offsets[j + 1] - self.offsets[j]
            yield pidx, np.fromfile(fi, dtype=np.int64, count=n), np.fromfile(fv, dtype=np.float32, count=n)


class HeapTrim:
    """Hands freed heap memory back to the OS at most once a second (glibc's malloc_trim).

    The streaming pass frees as much as it allocates, but glibc keeps freed blocks of its
    arenas, so RSS crept up with the longest proteins (which come last: batches are sorted by
    length) while live memory stayed flat: 2.35 GB RSS vs 1.25 GB after a trim at 3,750 of
    4,000 proteins with 10,240 latents. A no-op where glibc is not the allocator.
    """

    def __init__(self, every_s: float = 1.0):
        self.every_s, self.last = every_s, time.monotonic()
        try:
            import ctypes

            self.trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self.trim = None

    def __call__(self) -> None:
        if self.trim is not None and time.monotonic() - self.last >= self.every_s:
            self.trim(0)
            self.last = time.monotonic()
