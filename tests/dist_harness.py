"""Spawning gloo process groups for the distributed tests: R CPU processes on a free local port.

A worker is a module-level function fn(rank, world, *args); it runs after init_process_group and
its exception fails the test (torch.multiprocessing re-raises it in the parent with its traceback).
"""
from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, timeout_s, fn, args):
    torch.set_num_threads(1)  # a 2-core machine: ranks must not oversubscribe it
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args, timeout_s: float = 60.0) -> None:
    """Run fn(rank, world, *args) in `world` spawned processes joined in one gloo group."""
    mp.start_processes(_entry, args=(world, free_port(), timeout_s, fn, args), nprocs=world, join=True,
                       start_method="spawn")


def shard_bounds(sizes, rank):
    start = sum(sizes[:rank])
    return start, start + sizes[rank]
