"""torch.distributed for the stages that grow with the data (embed, train), launched by torchrun.

``torchrun --nproc-per-node W -m esmsae embed|train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; that alone switches a stage to W processes. ``python -m esmsae ...`` (no
``WORLD_SIZE``) is one process and none of this code runs a collective.

The backend follows the device: NCCL for CUDA, gloo for the CPU (the test path). Each rank uses
``cuda:LOCAL_RANK`` when the device is CUDA. Rank 0 alone writes manifests, checkpoints,
``metrics.jsonl`` and wandb. Teardown is a barrier and ``destroy_process_group`` in ``finally``:
a gloo worker can abort during interpreter shutdown when the group is left alive
(pytorch/pytorch PR #179291, seen once in 26 two-rank runs in ``shared/design/scale_out.md``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, device: str) -> str:
        """The device this rank computes on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
        if self.distributed and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device


def world() -> World:
    """This process's place in the torchrun job (rank 0 of 1 without torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@contextmanager
def process_group(device: str) -> Iterator[World]:
    """Join the torchrun job for the duration of a stage (no-op in one process). The group is
    torn down with a barrier first, so no rank leaves while another still writes."""
    w = world()
    if not w.distributed or initialized():
        yield w
        return
    import torch.distributed as dist

    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group(backend=backend)
    try:
        yield w
        dist.barrier()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if initialized():
        import torch.distributed as dist

        dist.barrier()


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or max) across ranks; the identity in one process."""
    if initialized():
        import torch.distributed as dist

        op_ = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        if dist.get_backend() == "nccl" and t.device.type != "cuda":  # NCCL reduces CUDA tensors only
            g = t.cuda()
            dist.all_reduce(g, op=op_)
            t.copy_(g.cpu())
        else:
            dist.all_reduce(t, op=op_)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of any length from every rank (rank order); itself in one process."""
    if not initialized():
        return t
    import torch.distributed as dist

    W = dist.get_world_size()
    n = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(W)]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))
    pad = torch.cat([t, t.new_zeros(m - t.numel())])
    out = [torch.empty_like(pad) for _ in range(W)]
    dist.all_gather(out, pad)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)])


def broadcast_object(obj, src: int = 0):
    """A picklable object from rank ``src`` to all ranks (the object itself in one process)."""
    if not initialized():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
