"""`torchrun --nproc-per-node N -m nhl_fast train ...`: the command's data-parallel training.

Under torchrun (WORLD_SIZE > 1 in the environment) `setup` joins the process group (nccl when training
on CUDA, gloo on CPU; timeout NHL_DIST_TIMEOUT seconds when set) and returns a :class:`DDPContext`:
the model runs in DistributedDataParallel, each rank reads its DistributedSampler share of every epoch
(--batch-size is the GLOBAL batch: each of N ranks takes batch/N), the objective sees the global
batch (nhl_fast.distributed.GlobalBatch), evaluation is database-sharded, and only rank 0 writes files.
Ctrl-C: each rank only notes the signal; the ranks agree after every step (one tiny all_reduce) and
stop together, rank 0 saving the resumable checkpoint. A second Ctrl-C interrupts at once.
"""
from __future__ import annotations

import math
import os
import signal
from typing import Callable, Optional

import torch
import torch.distributed as dist

import nhl_fast as nf


class DDPContext:
    def __init__(self, device: torch.device, owns_group: bool = True):
        self.device, self.owns_group = device, owns_group
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._stop = False
        self._previous = previous = signal.getsignal(signal.SIGINT)

        def note(signum, frame):  # first Ctrl-C: stop at the next step boundary, on every rank
            self._stop = True
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, note)

    # ------------------------------------------------------------ training

    def wrap(self, model: torch.nn.Module, objective) -> torch.nn.Module:
        """DDP around the model; the objective computed on every rank's batch at once. On CUDA the batch norms
        become SyncBatchNorm (statistics of the global batch; the layers keep their parameters, so the optimizer
        is unchanged); torch has no CPU SyncBatchNorm, so on CPU each rank normalises its own share."""
        from torch.nn.parallel import DistributedDataParallel

        objective.global_batch = nf.distributed.GlobalBatch()
        if self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def per_rank_batch(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise ValueError(f"--batch-size {batch_size} is the global batch: it must be a multiple of the "
                             f"{self.world} ranks")
        return batch_size // self.world

    def n_batches(self, split, batch_size: int) -> int:
        return math.ceil(math.ceil(len(split) / self.world) / self.per_rank_batch(batch_size))

    def batches(self, split, batch_size: int, *, epoch: int, seed: int, workers: int = 0):
        """This rank's (inputs, labels, row indices) batches of the epoch (DistributedSampler order)."""
        sampler = torch.utils.data.distributed.DistributedSampler(range(len(split)), num_replicas=self.world,
                                                                  rank=self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64)
        per_rank = self.per_rank_batch(batch_size)
        if hasattr(split, "inputs"):  # in memory: direct indexing
            for s in range(0, len(order), per_rank):
                idx = order[s:s + per_rank]
                yield split.inputs[idx], split.labels[idx], idx
        else:  # a Dataset (image lists): a loader over this rank's rows
            loader = torch.utils.data.DataLoader(split, batch_size=per_rank, num_workers=workers,
                                                 sampler=order.tolist())
            yield from loader

    def stop_requested(self) -> bool:
        """(collective) whether any rank got Ctrl-C since the last step."""
        flag = torch.tensor([int(self._stop)], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # ------------------------------------------------------------ evaluation and files

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (batch-norm running statistics) on every rank, so that every rank encodes alike."""
        for b in model.buffers():
            dist.broadcast(b.data, src=0)

    def shard(self, split):
        """This rank's contiguous share of a split (database sharding: rank order = index order)."""
        n = len(split)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        if hasattr(split, "inputs"):
            return type(split)(split.inputs[lo:hi], split.labels[lo:hi])
        return _SubsetSplit(split, range(lo, hi))

    def on_rank0(self, fn: Callable):
        """fn() on rank 0, its result on every rank; an error it raises is raised on every rank."""
        box = [None]
        if self.rank == 0:
            try:
                box[0] = ("ok", fn())
            except Exception as e:  # noqa: BLE001 -- sent to the other ranks, then raised here too
                box[0] = ("error", e)
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        """Restore the Ctrl-C handler; leave the process group, if setup joined it (a caller's own group stays)."""
        signal.signal(signal.SIGINT, self._previous)
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class _SubsetSplit:
    """Rows of a Dataset split, with the splits' batches() interface."""

    def __init__(self, split, rows):
        self.split, self.rows = split, rows

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator=None, workers: int = 0):
        subset = torch.utils.data.Subset(self.split, list(self.rows))
        yield from torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers)


def setup(device: str = "auto") -> Optional[DDPContext]:
    """A DDPContext when started by torchrun with more than one process, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    owns_group = not dist.is_initialized()
    return DDPContext(nf.distributed.init(device), owns_group)
