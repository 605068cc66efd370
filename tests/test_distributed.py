"""nhl_fast.distributed on CPU process groups (gloo, 2 and 3 spawned ranks) against one process.

Each worker builds the same data from one seed, takes its shard, and compares what the sharded call
returns with the single-process function on the whole data: top-k equal exactly, metrics to 1e-12;
uneven shards, a shard with fewer than k codes, an empty shard. DDP: 2 ranks with batch B/2 take the
step of one process with batch B. Faults: a bad shard file, a rank that dies or hangs.
"""
from __future__ import annotations

import copy
import os
import time

import pytest
import torch

import nhl_fast as nf
from dist_harness import free_port, run_ranks, shard_bounds

BITS = (8, 13, 64, 70)  # lengths not a multiple of 64, two words: many ties at 8 and 13 bits
N, Q = 200, 20


def data(seed=0, multi=False):
    g = torch.Generator().manual_seed(seed)
    db = nf.pack(torch.randn(N, 70, generator=g))
    q = nf.pack(torch.randn(Q, 70, generator=g))
    if multi:
        dl = (torch.rand(N, 7, generator=g) < 0.3).long()
        ql = (torch.rand(Q, 7, generator=g) < 0.3).long()
        ql[0] = 0  # a query with no relevant item
    else:
        dl = torch.randint(0, 5, (N,), generator=g)
        ql = torch.randint(0, 5, (Q,), generator=g)
    return q, db, ql, dl


def close(a, b, what):
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert torch.allclose(a.double(), b.double(), rtol=0, atol=1e-12), (what, (a.double() - b.double()).abs().max())


# ---------------------------------------------------------------- workers (module level: spawn pickles them)


def _search_and_metrics(rank, world, layouts):
    torch.manual_seed(1)
    for sizes in layouts:
        lo, hi = shard_bounds(sizes, rank)
        for multi in (False, True):
            q, db, ql, dl = data(multi=multi)
            mine, mine_l = db[lo:hi], dl[lo:hi]
            for k in (1, 10, N):
                d, i = nf.distributed.topk(q, mine, k, BITS)
                rd, ri = nf.topk(q, db, k, BITS)
                assert torch.equal(d, rd) and torch.equal(i, ri), (sizes, k)
            for topk in (None, 3, 50, N):  # 3: from the merged top-k (3 * 64 <= N); 50, N: the rank scan
                for ties in ("index", "average"):
                    got = nf.distributed.mean_average_precision(q, mine, ql, mine_l, BITS, topk=topk, ties=ties,
                                                                reduction="none")
                    want = nf.mean_average_precision(q, db, ql, dl, BITS, topk=topk, ties=ties, reduction="none")
                    close(got, want, (sizes, multi, topk, ties))
            close(nf.distributed.mean_average_precision(q, mine, ql, mine_l, BITS),
                  nf.mean_average_precision(q, db, ql, dl, BITS), "mAP mean")
            for radius in (0, 2):
                close(nf.distributed.precision_at_radius(q, mine, ql, mine_l, BITS, radius=radius),
                      nf.precision_at_radius(q, db, ql, dl, BITS, radius=radius), ("P@r", radius))
            for got, want in zip(nf.distributed.precision_recall_curve(q, mine, ql, mine_l, BITS, reduction="none"),
                                 nf.precision_recall_curve(q, db, ql, dl, BITS, reduction="none")):
                close(got, want, "PR")
    # queries sharded (uneven, one rank without queries), the whole database on every rank
    q_sizes = [5, 0, 15][:world] if world == 3 else [7, 13]
    lo, hi = shard_bounds(q_sizes, rank)
    q, db, ql, dl = data(multi=True)
    for topk, ties in ((None, "index"), (10, "average")):
        close(nf.distributed.mean_average_precision(q[lo:hi], db, ql[lo:hi], dl, BITS, topk=topk, ties=ties,
                                                    shard="query"),
              nf.mean_average_precision(q, db, ql, dl, BITS, topk=topk, ties=ties), ("query", topk, ties))
        close(nf.distributed.mean_average_precision(q[lo:hi], db, ql[lo:hi], dl, BITS, topk=topk, ties=ties,
                                                    shard="query", reduction="none"),
              nf.mean_average_precision(q, db, ql, dl, BITS, topk=topk, ties=ties, reduction="none")[:, lo:hi], "none")
    close(nf.distributed.precision_at_radius(q[lo:hi], db, ql[lo:hi], dl, BITS, shard="query"),
          nf.precision_at_radius(q, db, ql, dl, BITS), "query P@r")
    for got, want in zip(nf.distributed.precision_recall_curve(q[lo:hi], db, ql[lo:hi], dl, BITS, shard="query"),
                         nf.precision_recall_curve(q, db, ql, dl, BITS)):
        close(got, want, "query PR")
    # bad input on one rank: the same clear error on every rank, no hang
    q, db, ql, dl = data()
    bad = db[lo:hi].int() if rank == world - 1 else db[:3]
    with pytest.raises(TypeError, match=f"rank {world - 1}: db must be int64"):
        nf.distributed.topk(q, bad, 3, BITS)
    with pytest.raises(ValueError, match="k=1000 must be in"):
        nf.distributed.topk(q, db[:3], 1000, BITS)
    with pytest.raises(ValueError, match="same queries"):
        nf.distributed.topk(q[rank:rank + 2], db[:3], 2, BITS)


def _index(rank, world, sizes, folder):
    q, db, _, _ = data()
    lo, hi = shard_bounds(sizes, rank)
    index = nf.distributed.ShardedHammingIndex(BITS)
    index.add(db[lo:lo + (hi - lo) // 2])
    index.add(db[lo + (hi - lo) // 2:hi])
    assert index.offsets() == [sum(sizes[:r]) for r in range(world + 1)]
    want = nf.topk(q, db, 7, BITS)
    for got in (index.search(q, 7), index.search(q if rank == 1 else None, 7, src=1)):
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    path = index.save(os.path.join(folder, "db-{rank}.safetensors"))
    assert path.endswith(f"db-{rank}.safetensors") and os.path.exists(path)
    loaded = nf.distributed.ShardedHammingIndex.load(os.path.join(folder, "db-{rank}.safetensors"))
    assert loaded.ntotal_local == hi - lo and loaded.bits == BITS
    assert all(torch.equal(a, b) for a, b in zip(loaded.search(q, 7, bits=(8, 64)), nf.topk(q, db, 7, (8, 64))))
    if rank == 0:  # a bad shard file on rank 0: every rank raises, naming the rank and the file
        with open(os.path.join(folder, "db-0.safetensors"), "wb") as f:
            f.write(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"rank 0: .*db-0\.safetensors: not a NestedHammingIndex file"):
        nf.distributed.ShardedHammingIndex.load(os.path.join(folder, "db-{rank}.safetensors"))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(12, 16)
        self.head = nf.NestedHashLayer(16, bit_list=(8, 16, 32))

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def _same_steps(rank, world, net, obj, loss_of, B, steps=2):
    """`steps` SGD steps of DDP on this rank's rows (the objective on the global batch) against one process
    with all B rows: equal loss, adaptive weights and parameters after every step. Returns the two objectives."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ref_net, ref_obj = copy.deepcopy(net), copy.deepcopy(obj)
    obj.global_batch = nf.distributed.GlobalBatch()
    ddp = DDP(net)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    ref_opt = torch.optim.SGD(ref_net.parameters(), lr=0.5)
    mine = slice(rank * B // world, (rank + 1) * B // world)
    for s in range(steps):
        ref_opt.zero_grad()
        ref_loss = loss_of(ref_net, ref_obj, s, slice(None))
        ref_loss.backward()
        ref_opt.step()
        opt.zero_grad()
        loss = loss_of(ddp, obj, s, mine)
        loss.backward()
        opt.step()
        assert abs(loss.item() - ref_loss.item()) <= 1e-6 * max(1.0, abs(ref_loss.item())), (s, loss, ref_loss)
        assert torch.allclose(obj.last_weights, ref_obj.last_weights, rtol=0, atol=1e-6), (s, obj.last_weights)
        for (name, p), r in zip(net.named_parameters(), ref_net.parameters()):
            assert torch.allclose(p, r, rtol=0, atol=1e-6), (s, name, (p - r).abs().max())
    return obj, ref_obj


def _ddp_step(rank, world, loss_name):
    torch.manual_seed(0)
    B, steps = 8, 2
    xs = torch.randn(steps, B, 12)
    ys = torch.randint(0, 4, (steps, B))
    idx = torch.stack([torch.randperm(20)[:B] for _ in range(steps)])
    torch.manual_seed(1)
    net = _Net()
    obj = nf.NHLObjective(loss_name, bit_list=(8, 16, 32), adaptive=True, distill=0.1, num_classes=4, num_train=20)
    obj, ref_obj = _same_steps(rank, world, net, obj, lambda m, o, s, r: o(m(xs[s, r]), ys[s, r], idx[s, r]), B, steps)
    for (name, b), r in zip(obj.named_buffers(), ref_obj.buffers()):  # memory banks: every rank's rows
        assert torch.allclose(b, r, rtol=0, atol=1e-6), (name, (b - r).abs().max())


class _TwoViewNet(_Net):
    def forward(self, x):
        z = torch.relu(self.body(x))
        return z, self.head(z)


def _ddp_step_two_views(rank, world, loss_name):
    """The unsupervised objective under DDP: both views' codes and latents gathered with their gradient, so
    2 ranks with B/2 each take the step of one process with B (the losses here are deterministic)."""
    torch.manual_seed(0)
    B, steps = 8, 2
    xs = torch.randn(steps, B, 12)
    xs2 = xs + 0.3 * torch.randn(steps, B, 12)

    def loss_of(model, obj, s, rows):
        (z1, u1), (z2, u2) = model(xs[s, rows]), model(xs2[s, rows])
        return obj(u1, u_other=u2, z=z1, z_other=z2)

    torch.manual_seed(1)
    net, obj = _TwoViewNet(), nf.NHLObjective(loss_name, bit_list=(8, 16, 32), adaptive=True, distill=0.1)
    _same_steps(rank, world, net, obj, loss_of, B, steps)


def _fault(rank, world, how, out):
    q, db, _, _ = data()
    if rank == 1:
        if how == "killed":
            os.kill(os.getpid(), 9)  # SIGKILL: as the kernel's OOM killer or a lost host
        time.sleep(30)  # "hangs": the others must give up after the group's timeout
        return
    t0 = time.perf_counter()
    try:
        nf.distributed.mean_average_precision(q, db[:100], torch.zeros(Q, dtype=torch.long),
                                              torch.zeros(100, dtype=torch.long), BITS)
        result = "no error"
    except nf.distributed.RankFailure as e:
        result = f"RankFailure {e}"
    with open(out, "w") as f:
        f.write(f"{time.perf_counter() - t0:.1f}\n{result}")


def _fault_entry(rank, world, port, how, out):
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=3))
    _fault(rank, world, how, out)
    os._exit(0)  # rank 0 after a failed group: leave without waiting for the dead peer


# ---------------------------------------------------------------- tests


def test_search_and_metrics_three_ranks():
    # uneven shards with an empty one; a shard of fewer than k = 10 codes
    run_ranks(_search_and_metrics, 3, [[90, 0, 110], [3, 150, 47]])


def _two_ranks(rank, world, folder):
    _search_and_metrics(rank, world, [[1, 199]])
    _index(rank, world, [120, 80], folder)
    for loss_name in ("csq", "dpsh"):  # closed-form and autograd paths; dpsh has a memory bank
        _ddp_step(rank, world, loss_name)
    for loss_name in ("sortednce", "greedyhash"):  # two views: codes and latents of both travel
        _ddp_step_two_views(rank, world, loss_name)
    _train_command(rank, folder)


def _train_command(rank, folder):
    """`nhl-fast train` as torchrun starts it (RANK, WORLD_SIZE, MASTER_* set): one run directory written
    by rank 0 only, then --resume continuing it on both ranks."""
    import json

    from nhl_fast.app.cli import main

    run = os.path.join(folder, "run")
    assert main(["train", "--epochs", "1", "--batch-size", "128", "--out", run, "--quiet"]) == 0
    assert main(["train", "--resume", "--epochs", "2", "--out", run, "--quiet"]) == 0
    if rank == 0:
        result = json.load(open(os.path.join(run, "metrics.json")))
        assert result["epochs"] == 2 and [h["epoch"] for h in result["history"]] == [1, 2]
        assert len(result["final"]["map"]) == 5 and all(0 < m <= 1 for m in result["final"]["map"])
        assert not [f for f in os.listdir(run) if f.startswith(".tmp")]  # no temporary file left behind


def test_two_ranks_search_index_metrics_and_ddp_step(tmp_path):
    # one spawn for all two-rank checks: starting a process (importing torch) dominates their cost
    run_ranks(_two_ranks, 2, str(tmp_path))


@pytest.mark.parametrize("how", ["killed", "hangs"])
def test_failing_rank_makes_the_others_raise(tmp_path, how):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port, out = free_port(), str(tmp_path / "rank0.txt")
    procs = [ctx.Process(target=_fault_entry, args=(r, 2, port, how, out)) for r in range(2)]
    for p in procs:
        p.start()
    procs[0].join(60)
    alive = procs[0].is_alive()
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    assert not alive, "rank 0 hung"
    seconds, result = open(out).read().split("\n", 1)
    assert result.startswith("RankFailure nhl_fast.distributed.mean_average_precision: a collective failed on rank 0"), result


def test_without_a_process_group():
    q, db, _, _ = data()
    with pytest.raises(RuntimeError, match="initialised process group"):
        nf.distributed.topk(q, db, 3, BITS)
