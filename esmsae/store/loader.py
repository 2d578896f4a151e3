"""Batches for SAE training: shuffled tokens from a bounded window of store shards, resumable at an
exact position (the loader's state is saved with the run)."""
from __future__ import annotations

import threading
from typing import Any, Iterator

import numpy as np
import torch

from esmsae.store.activations import ActivationStore


class TrainError(ValueError):
    """A training run cannot start or resume; the message says why (store, settings, architecture)."""


class ShardBatches:
    """Deterministic, resumable batches of training tokens from a store."""

    def __init__(self, store: ActivationStore, names: list[str], batch_size: int, buffer_shards: int, seed: int,
                 part: tuple[int, int] = (0, 1)):
        """``part`` = (rank, world): yield only this rank's rows of each global batch (the order
        is the global batch's, so the ranks' rows together are the one-process batch)."""
        self.store, self.names, self.bs, self.group_size, self.seed = store, names, batch_size, buffer_shards, seed
        self.part = part
        self.pos = (0, 0, 0)  # (epoch, group, batch within group)
        if store.n_tokens("train") < batch_size:
            raise TrainError(
                f"the store has {store.n_tokens('train')} training tokens, fewer than one batch of {batch_size}; "
                "embed more proteins or lower batch_size"
            )

    def _groups(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.store.shards))
        return [sorted(order[i : i + self.group_size].tolist()) for i in range(0, len(order), self.group_size)]

    def _load(self, shards: list[int]) -> dict[str, np.ndarray]:
        return {n: np.concatenate([self.store.split_tokens(i, n, "train") for i in shards]) for n in self.names}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, g0, b0 = self.pos
        prefetch: dict[tuple[int, int], Any] = {}

        def start(e: int, g: int, groups: list[list[int]]) -> None:
            box: dict[str, Any] = {}
            t = threading.Thread(target=lambda: box.update(data=self._load(groups[g])), daemon=True)
            t.start()
            prefetch[(e, g)] = (t, box)

        while True:
            groups = self._groups(epoch)
            for g in range(g0, len(groups)):
                if (epoch, g) not in prefetch:
                    start(epoch, g, groups)
                t, box = prefetch.pop((epoch, g))
                t.join()
                data = box["data"]
                # prefetch the next group while this one trains
                if g + 1 < len(groups):
                    start(epoch, g + 1, groups)
                else:
                    start(epoch + 1, 0, self._groups(epoch + 1))
                T = len(next(iter(data.values())))
                perm = np.random.default_rng([self.seed, epoch, g]).permutation(T)
                for b in range(b0, T // self.bs):
                    sel = np.sort(perm[b * self.bs : (b + 1) * self.bs])
                    r, W = self.part
                    sel = sel[r * (self.bs // W):(r + 1) * (self.bs // W)]
                    batch = {n: torch.from_numpy(data[n][sel].astype(np.float32)) for n in self.names}
                    self.pos = (epoch, g, b + 1)
                    yield batch
                b0 = 0
                self.pos = (epoch, g + 1, 0)
            g0 = 0
            epoch += 1
            self.pos = (epoch, 0, 0)
