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


class TopN:
    """Per-feature running top-N of (protein max activation, protein, sparse track).

    The order is total: activation descending, then protein index ascending. So the top-N does
    not depend on the order proteins arrive in, and the top-N of a union is the top-N of the
    parts' top-Ns (what merges the ranks of a distributed build exactly)."""

    def __init__(self, n_features: int, n: int):
        self.val_FN = np.full((n_features, n), -np.inf, dtype=np.float32)
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
        self.items[f][slot] = (pidx, *put())
        return True

    def offer(self, f_P: np.ndarray, vmax_P: np.ndarray, pidx: int, put: Callable[[int], tuple[int, int]]) -> None:
        """One protein's (feature, max activation) pairs; ``put(j)`` spills pair j's track and
        returns where it lies (see TrackSpill)."""
        # only pairs reaching the feature's current N-th best need Python work
        cand = np.flatnonzero(vmax_P >= self.val_FN[f_P].min(1))
        for j in cand[np.argsort(-vmax_P[cand], kind="stable")]:
            self.offer_one(int(f_P[j]), float(vmax_P[j]), pidx, lambda j=j: put(j))

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
        self.items: list[dict[int, tuple]] = [dict() for _ in range(n_features)]

    def keys(self, f_P: np.ndarray, pidx: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            return _mix64(_mix64(np.uint64(self.seed) ^ (np.asarray(f_P, np.uint64) << np.uint64(32))) ^ np.uint64(pidx))

    def offer_one(self, f: int, key: np.uint64, pidx: int, vmax: float, put: Callable[[], tuple[int, int]]) -> bool:
        slot = int(np.argmax(self.key_FR[f]))
        if key >= self.key_FR[f, slot]:
            return False
        self.key_FR[f, slot] = key
        self.items[f][slot] = (pidx, float(vmax), *put())
        return True

    def offer(self, f_P: np.ndarray, vmax_P: np.ndarray, pidx: int, put: Callable[[int], tuple[int, int]]) -> None:
        k_P = self.keys(f_P, pidx)
        for j in np.flatnonzero(k_P < self.key_FR[f_P].max(1)):
            self.offer_one(int(f_P[j]), k_P[j], pidx, float(vmax_P[j]), lambda j=j: put(j))


class TrackSpill:
    """Append-only file of the sparse tracks (positions int32, then values float32) that the
    top-N and the reservoir keep; they hold only (offset, length). Held in memory, the tracks
    of all example slots (features x (top_n + reservoir), 614k with 10,240 latents) grow as the
    slots fill and as the strongest examples drift to proteins with longer tracks; on disk,
    memory stays at a few integers per slot. The file grows only with the accepted offers,
    O(slots x log N)."""

    def __init__(self, folder: Path):
        self.path = folder / "tracks.bin"
        self.fh = open(self.path, "w+b")  # read back through the same handle: the file may be unlinked (see scratch_files)
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
