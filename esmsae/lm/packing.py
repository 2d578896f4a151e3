"""Packing several proteins into one row of a recurrent forward (UniRep), so that every step of the
scan multiplies many full rows.

A recurrent LM's step is two GEMMs over the rows still running; below ~128 rows they run far from
this CPU's GEMM rate (bench/unirep_forward.py), and with length batching a batch shrinks to its
longest protein's few rows at the end. Packed, a row holds proteins one after the other
([start] a [stop] [start] b [stop] ...) and the cell resets its state at each ``start`` token
(esmsae.lm.unirep), so each protein's states are exactly those of a forward on it alone.

Rows are filled longest first, each protein into the least filled row (LPT scheduling, Graham 1969):
the rows of a batch end within one short protein of each other, and the scan runs ``rows`` rows for
nearly all of its steps."""
from __future__ import annotations

import heapq
import math
from typing import Iterator, Sequence


def pack_rows(lengths: Sequence[int], batch_tokens: int, max_rows: int) -> Iterator[list[list[int]]]:
    """Batches of rows of item indices. Each batch has at most ``max_rows`` rows and at most
    ``batch_tokens`` tokens in rows x row length (the forward's output memory); its row length is
    the longest remaining item or the remaining tokens spread over the rows, whichever is larger.
    Every index appears exactly once; an item longer than ``batch_tokens`` gets a row of its own."""
    if max_rows < 1:
        raise ValueError(f"pack_rows: max_rows must be >= 1, got {max_rows}")
    todo = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    while todo:
        longest = lengths[todo[0]]
        remaining = sum(lengths[i] for i in todo)
        rows = max(1, min(max_rows, batch_tokens // max(longest, 1), math.ceil(remaining / max(longest, 1))))
        cap = max(longest, min(batch_tokens // rows, math.ceil(remaining / rows)))
        heap = [(0, r) for r in range(rows)]  # (tokens used, row)
        out: list[list[int]] = [[] for _ in range(rows)]
        left = []
        for i in todo:
            used, r = heap[0]
            if used + lengths[i] <= cap:
                heapq.heapreplace(heap, (used + lengths[i], r))
                out[r].append(i)
            else:  # no row has room (the least filled has not): a later, shorter item may still fit
                left.append(i)
        todo = left
        yield [row for row in out if row]
