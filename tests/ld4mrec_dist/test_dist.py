"""Collectives against their single-process result, on 2 real gloo processes (no Ray)."""

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ld4mrec_dist import dist as sync
from ld4mrec_dist.eval.evaluator import EvalData, evaluate
from ld4mrec_dist.partition import user_range
from ld4mrec_dist.sampler import init_history, update_history

WORLD = 2
CAP = 4  # batch capacity per rank
N_USERS, DIM = 10, 3
USERS = [torch.tensor([1, 4, 7]), torch.tensor([4, 9, 2, 0])]  # user 4 on both ranks


def _rank_loss(weight, r, sparse=False):
    targets = torch.arange(len(USERS[r]) * DIM, dtype=torch.float32).view(-1, DIM)
    return ((torch.nn.functional.embedding(USERS[r], weight, sparse=sparse) - targets) ** 2).mean()


def _eval_data():
    rng = np.random.default_rng(0)
    inputs = sp.csr_matrix((rng.random((30, 12)) < 0.3).astype(np.float32))
    truth = sp.csr_matrix(((rng.random((30, 12)) < 0.2) & (inputs.toarray() == 0)).astype(np.float32))
    users = np.flatnonzero((np.asarray(truth.sum(1)).ravel() > 0) & (np.asarray(inputs.sum(1)).ravel() > 0))
    return EvalData(inputs, truth, users)


def _score_fn():
    w = torch.randn(12, 12, generator=torch.Generator().manual_seed(3))
    return lambda rows, users: rows.to_dense() @ w + users.float()[:, None] * 1e-3


def _worker(r, init_file, out):
    try:
        _worker_body(r, init_file, out)
    except BaseException as err:  # report instead of leaving the other rank waiting
        out.put((r, repr(err)))
        raise


def _worker_body(r, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=WORLD)
    # z_in rows: sparse gradient averaged over ranks.
    emb = torch.nn.Embedding(N_USERS, DIM, sparse=True)
    torch.nn.init.constant_(emb.weight, 0.5)
    _rank_loss(emb.weight, r, sparse=True).backward()
    sync.synced_sparse_grad(emb.weight, CAP)
    # Sampler history: every rank's values in rank order, same pure update.
    g = torch.Generator().manual_seed(100 + r)
    t_B = torch.randint(1, 4, (3 + r,), generator=g)
    loss_B = torch.rand(3 + r, generator=g)
    table, counts = init_history(3, 2)
    t_N, loss_N = sync.gather_step_losses(t_B, loss_B, CAP)
    table, counts = update_history(table, counts, t_N, loss_N)
    # each rank holds only its own users' rows (partition.user_range), as in training
    mine = _eval_data().of_users(user_range(30, r, WORLD))
    metrics = evaluate(_score_fn(), mine, [2, 5], batch_size=4, device=torch.device("cpu"))
    # numpy, not tensors: a tensor in a queue is shared through a file that dies with its process
    out.put((r, *(x.numpy() for x in (emb.weight.grad.to_dense(), table, counts, t_B, loss_B)), metrics))
    dist.barrier()
    dist.destroy_process_group()


def _run_two_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, str(tmp_path / "init"), out)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results: dict = {}
    for _ in range(WORLD):
        res = out.get(timeout=120)
        assert len(res) > 2, f"rank {res[0]} failed: {res[1]}"
        results[res[0]] = [torch.from_numpy(x) for x in res[1:-1]] + [res[-1]]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_collectives_match_single_process(tmp_path):
    res = _run_two_ranks(tmp_path)
    grad0, table0, counts0, *_ = res[0]
    grad1, table1, counts1, *_ = res[1]

    # z_in gradient: both ranks hold the gradient of the mean of the ranks' losses.
    weight = torch.full((N_USERS, DIM), 0.5, requires_grad=True)
    ((_rank_loss(weight, 0) + _rank_loss(weight, 1)) / WORLD).backward()
    assert torch.equal(grad0, grad1)
    torch.testing.assert_close(grad0, weight.grad)

    # Sampler tables are bitwise equal and equal the single-process update in rank order.
    assert torch.equal(table0, table1) and torch.equal(counts0, counts1)
    t_all = torch.cat([res[0][3], res[1][3]])
    loss_all = torch.cat([res[0][4], res[1][4]]).to(torch.float64)
    ref_table, ref_counts = update_history(*init_history(3, 2), t_all, loss_all)
    assert torch.equal(table0, ref_table) and torch.equal(counts0, ref_counts)

    # Distributed evaluation equals the single-process evaluation.
    single = evaluate(_score_fn(), _eval_data(), [2, 5], batch_size=4, device=torch.device("cpu"))
    for name, value in single.items():
        assert abs(res[0][5][name] - value) < 1e-6 and res[0][5] == res[1][5]
