"""The one-command GPU check: every GPU figure the README asks for, in one run.

    python benchmarks/gpu_check.py --out DIR                        # the GPU machine: < 9 min
    python benchmarks/gpu_check.py --device cpu --tiny --out DIR    # dry run of every code path, < 60 s
    python benchmarks/gpu_check.py --out DIR --only item_parallel ray   # rerun some parts

Parts, in this order; each runs in its own child process (`--part NAME`) under its own time
budget (killed when over it) and within the run's total (--total, 510 s on a GPU). Its rows
are appended to DIR/gpu_check.jsonl as they are measured, so a part that fails or runs out
of time keeps what it measured, and the others still run; each part ends with a
`part NAME` row (status ok / failed / timed out / skipped, its wall time, the tail of its
output when it failed). DIR/gpu_check.md (the summary, rewritten after every part: GPU
name, torch and CUDA versions, one table of every row) and DIR/gpu_check.log (all output)
sit next to it. Exit status 0 when every part is ok.

- roofline: ms per `train_step` (the loop's function; `before` / each optimisation / `after`,
  benchmarks/roofline.py) against its five [B, I]×[I, D]-sized GEMMs timed bare on random
  operands, fp32 and bf16 (steps under bf16 autocast, bare GEMMs in bf16), in alternating
  blocks each between torch.cuda.synchronize(); the bare GEMMs' achieved TFLOP/s (the
  GPU's GEMM roofline at these shapes, measured here rather than taken from a data sheet).
  Electronics' and Baby's shapes, random inputs of the real widths, B = D = 256.
- data: the synthetic `baby` and `electronics` datasets and their SVD factors, generated
  once under --data-root (benchmarks/.data/); later parts reuse them.
- electronics: Electronics-shape training throughput, fp32 vs bf16 autocast: the ideal loop
  (65,536 users' train rows densified on the GPU, 200 steps), the loop-step harness (RowStore
  → torch CSR → GPU, `train_step` timed piece by piece, 200 steps; ratio to the ideal) and
  one evaluation pass of 16,384 test users (gpu_smoke.loop_rows).
- item_parallel: the item-parallel path on one GPU: a 1-process NCCL group (gloo without
  NCCL or on a CPU), `item_mesh(1, 1, "cuda")`, Electronics. A few `item_parallel_step`s
  against DDP's `train_step` on the same batches and forward-process draws (the losses
  agree to 1e-5 in fp32, the parameters after them are compared too), both timed in
  alternating blocks in fp32 and bf16, and one evaluation pass through
  `item_parallel_ranking` against the data-parallel one (same users, metrics compared);
  then the model built sharded on the device (`parallel.build`: only the slices of V_k,
  the features and the degrees move to the GPU), one step and one top-k.
- smoke: gpu_smoke's in-process parts at Baby (ideal loop, loop-step harness, evaluation of
  all test users; fp32 and bf16).
- ray: gpu_smoke's full path through Ray Train, 1 GPU worker, Baby, 2 epochs (the second
  measured), fp32 and bf16, each against an ideal block just before it.

Wall time on one H200 with 16 cores (an estimate; nothing here has run on a GPU yet): the
child start-ups (import torch, CUDA context) ≈ 5–10 s each, 6 parts; roofline ≈ 1 min
(random Electronics-width features and 4 variants × 2 precisions × 2 shapes of models, then
5 rounds of 20-step blocks of milliseconds each); data ≈ 1.5–2 min (Electronics'
generation ≈ 1 min and its preparation, mostly single-threaded NumPy/Arrow, so 16 cores help
little; fbpca SVD of the 192,403 × 63,001 train matrix ≈ 12 s on 2 cores, less here; Baby
≈ 15 s); electronics ≈ 1 min (4 model builds copying 1 GB of item features to the GPU,
16 GB of dense rows, 800 steps of a few ms, 2 evaluation passes); item_parallel ≈ 40 s;
smoke ≈ 40 s; ray ≈ 1.5–2 min (a local Ray start, worker start-up and a 2-epoch fit per
precision). About 6–7 min in all; the budgets below and --total 510 s (a part over its
budget gets ≤ 25 s more to stop) keep it under 9 min whatever happens. A progress line is
printed per part and per measured row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    DATA_ROOT,
    RESULTS_DIR,
    Context,
    append_results,
    fmt,
    machine,
    markdown_table,
    row,
)
from benchmarks.gpu_smoke import PRECISIONS, Emit, free_memory, loop_rows, prec_name, ray_rows  # noqa: E402
from benchmarks.roofline import BABY, ELECTRONICS, Shape, Sizes  # noqa: E402

BENCH = "gpu_check"
PARTS = ("roofline", "data", "electronics", "item_parallel", "smoke", "ray")
LOSS_RTOL = 1e-5  # item-parallel vs data-parallel loss, fp32


@dataclass(frozen=True)
class Plan:
    """The sizes of a run: the GPU's, or the dry run's (--tiny)."""

    baby: str  # dataset shape of the smoke and ray parts
    electronics: str  # dataset shape of the electronics and item_parallel parts
    overrides: tuple[str, ...]  # config overrides of every dataset-backed part
    steps: int  # steps of each ideal / harness block
    ideal_users: int  # users whose rows the ideal loop densifies at `electronics`
    eval_users: int  # test users of the evaluation passes at `electronics`
    roofline: tuple[Shape, ...]
    sizes: Sizes  # roofline rounds and blocks
    compare_steps: int  # item-parallel vs data-parallel steps compared
    timed_steps: int  # steps per timed block of the item-parallel part
    rounds: int  # alternating blocks of the item-parallel part
    reserve_s: float  # a roofline measurement starts only with this much of its budget left
    total_s: float  # the run's total budget
    budgets: dict[str, float] = field(default_factory=dict)  # per part, seconds


GPU = Plan(baby="baby", electronics="electronics", overrides=(), steps=200, ideal_users=65_536,
           eval_users=16_384, roofline=(ELECTRONICS, BABY), sizes=Sizes(rounds=5, steps=20, warmup=5, profile_steps=0),
           compare_steps=5, timed_steps=20, rounds=3, reserve_s=20, total_s=510,
           budgets={"roofline": 120, "data": 240, "electronics": 150, "item_parallel": 120, "smoke": 120,
                    "ray": 200})
# The dry run: the same parts and code paths at the small synthetic shape (2,000 × 1,000).
TINY_ROOFLINE = Shape("tiny", users=300, items=500, d_text=8, d_image=24, per_user=6.0, batch=32, hidden=16,
                      svd_rank=8)
TINY = Plan(baby="small", electronics="small",
            overrides=("train.batch_size=64", "model.hidden=32", "eval.batch_size=256"), steps=3,
            ideal_users=1_024, eval_users=256, roofline=(TINY_ROOFLINE,),
            sizes=Sizes(rounds=2, steps=1, warmup=1, profile_steps=0), compare_steps=3, timed_steps=2, rounds=1,
            reserve_s=0, total_s=240,
            budgets={"roofline": 60, "data": 90, "electronics": 60, "item_parallel": 60, "smoke": 60, "ray": 120})


@dataclass
class Part:
    """What a part's function gets: the plan, the options, `emit` for each row, and `left()`
    (seconds to the part's deadline)."""

    plan: Plan
    device: str
    data_root: Path
    run_id: str
    emit: Emit
    deadline: float

    def left(self) -> float:
        return self.deadline - time.time()


# ---------------------------------------------------------------- parts


def part_roofline(p: Part) -> None:
    from benchmarks import roofline

    for shape in p.plan.roofline:
        for bf16 in PRECISIONS[::-1]:  # the headline first (bf16, Electronics): the budget may run out
            prec = prec_name(bf16)
            tag = f"{p.device} {prec}, {shape.name}: "
            if p.left() < p.plan.reserve_s:
                p.emit(row(BENCH, f"{tag}skipped (part budget spent)", None, ""))
                return
            res = roofline.measure(p.plan.sizes, shape=shape, device=p.device, bf16=bf16)
            print(roofline.report(res), flush=True)
            for r in roofline.rows_of(res, tag=tag, target=None, bench=BENCH):
                p.emit(r)
            p.emit(row(BENCH, f"{tag}five [B,I]x[I,D] GEMMs bare, achieved", roofline.tflops(res), "TFLOP/s",
                       all_gemms_tflops=roofline.tflops(res, "all"), shape=shape.name, precision=prec,
                       device=p.device))
            free_memory(p.device)


def part_data(p: Part) -> None:
    from benchmarks.common import dataset_path, item_factors
    from data_pipeline.dataset import open_dataset

    for shape in dict.fromkeys((p.plan.baby, p.plan.electronics)):
        t0 = time.perf_counter()
        ds = open_dataset(dataset_path(shape, p.data_root))
        t1 = time.perf_counter()
        item_factors(shape, data_root=p.data_root)
        p.emit(row(BENCH, f"dataset {shape}: generated and prepared (or found)", t1 - t0, "s",
                   svd_s=time.perf_counter() - t1, users=ds.n_users, items=ds.n_items,
                   train_nnz=int(ds.split_csr("train").nnz)))


def part_electronics(p: Part) -> None:
    loop_rows(p.plan.electronics, p.device, p.plan.steps, p.emit, p.data_root, p.plan.overrides,
              max_users=p.plan.ideal_users, eval_users=p.plan.eval_users, bench=BENCH)


def part_smoke(p: Part) -> None:
    loop_rows(p.plan.baby, p.device, p.plan.steps, p.emit, p.data_root, p.plan.overrides, bench=BENCH)


def part_ray(p: Part) -> None:
    ray_rows(p.plan.baby, p.device, p.plan.steps, p.emit, p.run_id, p.data_root, p.plan.overrides, bench=BENCH)


def part_item_parallel(p: Part) -> None:
    """One process, W = 1: the item-parallel step and ranking against the data-parallel ones."""
    import torch
    import torch.distributed as tdist

    from benchmarks.harness import free_port

    backend = "nccl" if p.device == "cuda" and tdist.is_nccl_available() else "gloo"
    if p.device == "cuda":
        torch.cuda.set_device(0)
    tdist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        _item_parallel(p, backend)
    finally:
        tdist.destroy_process_group()


def _item_parallel(p: Part, backend: str) -> None:
    import numpy as np
    import torch

    from benchmarks.gpu_smoke import shape_setup
    from benchmarks.harness import build
    from benchmarks.roofline import time_block
    from ld4mrec_dist.build import build_model, build_optimizers, wrap_cnet
    from ld4mrec_dist.eval.evaluator import EvalData, evaluate, evaluate_ranking
    from ld4mrec_dist.parallel import (
        item_mesh,
        item_parallel_ranking,
        item_parallel_step,
        item_param_groups,
        shard_items,
    )
    from ld4mrec_dist.parallel.item import local_tensor
    from ld4mrec_dist.rows import epoch_order, minibatches, rows_with_items, to_torch_csr
    from ld4mrec_dist.sampler import SamplerHistory
    from ld4mrec_dist.step import train_step

    plan, device = p.plan, p.device
    # An indexed device: DDP takes device_ids=[dev.index], the mesh and generators this GPU.
    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device(device)
    shape = plan.electronics
    _, ds, v_IK, cfg = shape_setup(shape, p.data_root, plan.overrides)
    train, b = ds.split_csr("train"), cfg.train.batch_size
    store = rows_with_items(train)
    batches = []
    for users_np, rows in minibatches(store, epoch_order(len(store), cfg.train.seed, 0, 0), b,
                                      len(store) - len(store) % b):
        batches.append((torch.from_numpy(users_np).to(dev), to_torch_csr(rows, dev)))
        if len(batches) == 16:
            break
    dp_model, dp_opts = build(cfg, ds, v_IK, str(dev))  # the same seeded init as the sharded one
    dp_cnet = wrap_cnet(dp_model, dev)  # DDP over the 1-process group, as the trainer has it
    ip_model = build_model(cfg, ds, v_IK, dev)
    layout = shard_items(ip_model, item_mesh(1, 1, dev.type))
    ip_opts = build_optimizers(ip_model, cfg, item_param_groups(ip_model))
    dp_hist = SamplerHistory.empty(dp_model.schedule.steps, cfg.diffusion)
    ip_hist = SamplerHistory.empty(ip_model.schedule.steps, cfg.diffusion)
    common = {"shape": shape, "users": ds.n_users, "items": ds.n_items, "batch": b, "hidden": cfg.model.hidden,
              "device": device, "backend": backend, "item_slice": [layout.lo, layout.hi]}

    def gen(seed: int) -> torch.Generator:
        return torch.Generator(device=dev).manual_seed(seed)

    def dp_step(i: int, g: torch.Generator, bf16: bool = False) -> float:
        users_B, rows_BI = batches[i % len(batches)]
        return float(train_step(dp_model, dp_cnet, dp_opts, dp_hist, users_B, rows_BI, g, cfg, autocast=bf16))

    def ip_step(i: int, g: torch.Generator, bf16: bool = False) -> float:
        # One generator for t, the mask and ε: with the whole catalogue in one slice,
        # draw_slice then draws exactly what LD4MRec.forward draws from `g`.
        users_B, rows_BI = batches[i % len(batches)]
        return float(item_parallel_step(ip_model, layout, ip_opts, ip_hist, users_B, rows_BI, (g, g), cfg,
                                        autocast=bf16))

    # The same batches, the same draws (one seed per step), fp32: the losses and the updated
    # parameters agree.
    losses = [(dp_step(i, gen(1000 + i)), ip_step(i, gen(1000 + i))) for i in range(plan.compare_steps)]
    rel = [abs(a - c) / max(abs(a), 1e-12) for a, c in losses]
    param_diff = max(float((local_tensor(q).detach() - r.detach()).abs().max())
                     for q, r in zip(ip_model.parameters(), dp_model.parameters(), strict=True))
    p.emit(row(BENCH, f"item-parallel vs data-parallel step: loss, {len(losses)} steps ({shape}, fp32, "
                      f"max rel. diff)", max(rel), "", met=bool(max(rel) <= LOSS_RTOL),
               target_text=f"≤ {LOSS_RTOL:g}", losses=losses, rel_diffs=rel, params_max_abs_diff=param_diff,
               tf32=bool(torch.backends.cuda.matmul.allow_tf32), precision="fp32", **common))

    # One evaluation pass each, same users, same (near-equal) weights.
    users = ds.eval_users("test")[:plan.eval_users]
    data = EvalData(train, ds.split_csr("test"), users)
    ks, eval_b = cfg.eval.ks, cfg.eval.batch_size
    dp_model.eval()
    ip_model.eval()
    t_dp, m_dp = _timed(lambda: evaluate(dp_model.score, data, ks, eval_b, dev), device)
    t_ip, m_ip = _timed(lambda: evaluate_ranking(item_parallel_ranking(ip_model, layout), data, ks, eval_b, dev),
                        device)
    diff = max(abs(m_dp[k] - m_ip[k]) for k in m_dp)
    p.emit(row(BENCH, f"item-parallel ranking: eval pass, {len(users):,} test users ({shape}, fp32)", t_ip, "s",
               ratio=t_ip / t_dp, reference="data-parallel eval pass (model.score), same users",
               recall20=m_ip["recall@20"], recall20_data_parallel=m_dp["recall@20"], metrics_max_abs_diff=diff,
               eval_users=int(len(users)), **common))
    p.emit(row(BENCH, f"item-parallel vs data-parallel ranking: max |Δ metric| ({shape}, fp32)", diff, "",
               metrics=m_ip, metrics_data_parallel=m_dp, **common))
    dp_model.train()
    ip_model.train()

    _built_sharded(p, cfg, ds, v_IK, batches[0], dev, common)

    # Timed: blocks of steps alternating between the two paths, per precision.
    batch_no = itertools.count()

    def stepper(fn: Callable[[int, torch.Generator, bool], float], g: torch.Generator,
                bf16: bool) -> Callable[[], None]:
        def one() -> None:
            fn(next(batch_no), g, bf16)

        return one

    for bf16 in PRECISIONS:
        prec = prec_name(bf16)
        paths = (stepper(dp_step, gen(1), bf16), stepper(ip_step, gen(2), bf16))
        for one in paths:  # warm-up
            one()
        dp_ms, ip_ms = [], []
        for _ in range(plan.rounds):
            dp_ms.append(1e3 * time_block(paths[0], plan.timed_steps, device))
            ip_ms.append(1e3 * time_block(paths[1], plan.timed_steps, device))
        dp, ip = float(np.median(dp_ms)), float(np.median(ip_ms))
        p.emit(row(BENCH, f"data-parallel train_step, DDP W = 1 ({shape}, {prec})", dp, "ms", blocks=dp_ms,
                   precision=prec, **common))
        p.emit(row(BENCH, f"item-parallel step, W_item = 1 ({shape}, {prec})", ip, "ms", ratio=ip / dp,
                   reference="data-parallel train_step (slowdown ×), alternating blocks", blocks=ip_ms,
                   precision=prec, **common))


def _built_sharded(p: Part, cfg: Any, ds: Any, v_IK: Any, batch: tuple[Any, Any], dev: Any,
                   common: dict[str, Any]) -> None:
    """The model built sharded on the device (parallel/build.py: item layers from the meta
    device, V_k / feature / degree slices moved to the GPU), one step and one top-k."""
    import torch

    from ld4mrec_dist.build import build_optimizers
    from ld4mrec_dist.parallel import item_mesh, item_parallel_step, item_parallel_topk, item_param_groups
    from ld4mrec_dist.parallel.build import build_sharded_from_dataset
    from ld4mrec_dist.sampler import SamplerHistory

    model, layout = build_sharded_from_dataset(cfg, ds, v_IK, item_mesh(1, 1, dev.type), dev)
    users_B, rows_BI = batch
    g = torch.Generator(device=dev).manual_seed(7)
    loss = float(item_parallel_step(model, layout, build_optimizers(model, cfg, item_param_groups(model)),
                                    SamplerHistory.empty(model.schedule.steps, cfg.diffusion), users_B, rows_BI,
                                    (g, g), cfg))
    top = item_parallel_topk(model, layout, rows_BI, users_B, 20, mask_BI=rows_BI)[1]
    devices = sorted({str(b.device) for _, b in model.named_buffers()} | {str(top.device)})
    p.emit(row(BENCH, f"item-parallel built sharded: first-step loss ({common['shape']}, fp32)", loss, "",
               met=bool(math.isfinite(loss)), target_text="finite", buffer_devices=devices, **common))


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    from benchmarks.harness import _sync

    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


PART_FNS: dict[str, Callable[[Part], None]] = {
    "roofline": part_roofline, "data": part_data, "electronics": part_electronics,
    "item_parallel": part_item_parallel, "smoke": part_smoke, "ray": part_ray,
}


# ---------------------------------------------------------------- one part (the child process)


def run_part(args: argparse.Namespace) -> int:
    """Run one part in this process; each row is appended to the results as it is measured."""
    import torch

    plan = TINY if args.tiny else GPU
    if args.device == "cpu":
        # As a Ray Train worker of 0.5-1 CPU has it; more threads than free cores make a
        # loaded machine's CPU steps many times slower (OpenMP threads wait for each other).
        torch.set_num_threads(1)
    ctx = Context(mode=_mode(args), run_id=args.run_id, results_dir=args.out, data_root=args.data_root)
    mach = machine()

    def emit(r: dict[str, Any]) -> None:
        r = {**r, "part": args.part}
        append_results(ctx, BENCH, [r], mach)
        ratio = f"  ({fmt(r['ratio'])}× {r.get('reference', '')})" if r.get("ratio") is not None else ""
        print(f"[{BENCH} {args.part}] {r['name']}: {fmt(r['value'], r.get('unit', ''))}{ratio}", flush=True)

    part = Part(plan, args.device, args.data_root, args.run_id, emit, args.part_deadline)
    try:
        PART_FNS[args.part](part)
    except BaseException as err:  # noqa: BLE001 - reported as a row; the parent goes on with the next part
        traceback.print_exc()
        emit(row(BENCH, f"{args.part}: failed ({type(err).__name__})", None, "", error=str(err)[-2000:],
                 traceback=traceback.format_exc()[-4000:]))
        return 1
    return 0


def _mode(args: argparse.Namespace) -> str:
    return f"{BENCH}-{args.device}{'-tiny' if args.tiny else ''}"


# ---------------------------------------------------------------- the whole run (the parent)


class Log:
    """Echo to stdout and to DIR/gpu_check.log, each line as it comes."""

    def __init__(self, path: Path):
        self.t0 = time.perf_counter()
        self.file: IO[str] = open(path, "a")  # closed by close()

    def line(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        self.file.write(text)
        self.file.flush()

    def say(self, text: str) -> None:
        self.line(f"[{BENCH} +{time.perf_counter() - self.t0:5.0f}s] {text}\n")

    def close(self) -> None:
        self.file.close()


def run_child(name: str, args: argparse.Namespace, budget: float, log: Log) -> tuple[str, int | None, list[str]]:
    """`--part name` in a child process (its own session, so that it and whatever it started
    can be stopped together), killed after `budget` s. Returns (status, exit code, last lines)."""
    cmd = [sys.executable, "-u", "-m", "benchmarks.gpu_check", "--part", name, "--run-id", args.run_id,
           "--out", str(args.out), "--device", args.device, "--data-root", str(args.data_root),
           "--part-deadline", str(time.time() + budget), *(["--tiny"] if args.tiny else [])]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    tail: deque[str] = deque(maxlen=40)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            log.line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=budget)
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        rc, status = None, "timed out"
        _stop(proc)
    reader.join(timeout=10)
    return status, rc, list(tail)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the child's process group (Ray's driver shuts its cluster down on it), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_all(args: argparse.Namespace) -> int:
    import torch

    plan = TINY if args.tiny else GPU
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(mode=_mode(args), run_id=args.run_id, results_dir=args.out, data_root=args.data_root)
    mach = machine()
    if args.device == "cuda" and not torch.cuda.is_available():
        append_results(ctx, BENCH, [row(BENCH, "no GPU: nothing measured", None, "", part="-")], mach)
        print(f"[{BENCH}] no CUDA device: nothing measured (--device cpu --tiny is the dry run)")
        return 1
    header = _header(args, mach)
    log = Log(args.out / f"{BENCH}.log")
    total = args.total or plan.total_s
    deadline = time.time() + total
    parts = [n for n in dict.fromkeys(args.only or PARTS) if n not in (args.skip or [])]
    log.say(f"run {args.run_id}: parts {', '.join(parts)}; {total:.0f} s in all; {header['gpu']}; rows -> "
            f"{args.out / (BENCH + '.jsonl')}")
    ok = True
    for name in parts:
        tail: list[str] = []
        rc: int | None = None
        left = deadline - time.time()
        budget = min(plan.budgets[name], left)
        if budget < min(30.0, plan.budgets[name] / 2):
            status, wall = "skipped", 0.0
            log.say(f"part {name}: skipped, {left:.0f} s left of the run's {total:.0f} s")
        else:
            log.say(f"part {name}: start (budget {budget:.0f} s, {left:.0f} s left)")
            t0 = time.perf_counter()
            status, rc, tail = run_child(name, args, budget, log)
            wall = time.perf_counter() - t0
            log.say(f"part {name}: {status} in {wall:.0f} s")
        ok &= status == "ok"
        append_results(ctx, BENCH, [row(BENCH, f"part {name}", wall, "s", part=name, status=status, rc=rc,
                                        budget_s=budget, tail=None if status == "ok" else "".join(tail)[-3000:])],
                       mach)
        write_summary(args, header, total)
    log.say(f"done: {'every part ok' if ok else 'NOT every part ok'}; summary {args.out / (BENCH + '.md')}")
    log.close()
    return 0 if ok else 1


def _header(args: argparse.Namespace, mach: dict[str, Any]) -> dict[str, Any]:
    """What the summary names: the GPU and its memory, torch and CUDA versions, the machine."""
    import torch

    gpu = "no GPU (dry run on the CPU)" if args.device != "cuda" else torch.cuda.get_device_name(0)
    mem = (f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
           if args.device == "cuda" else "—")
    return {"gpu": gpu, "gpu_memory": mem, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu": mach["cpu"], "cores": mach["cores"], "mem_gb": mach["mem_gb"], "git": mach["git"],
            "mode": _mode(args), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def run_rows(out: Path, run_id: str) -> list[dict[str, Any]]:
    """The rows of run `run_id` in DIR/gpu_check.jsonl (a line cut short by a kill is skipped)."""
    path = out / f"{BENCH}.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("run_id") == run_id:
            rows.append(r)
    return rows


def _note(r: dict[str, Any]) -> str:
    notes = []
    if r.get("tflops") is not None:
        notes.append(f"{fmt(r['tflops'])} TFLOP/s")
    if r.get("recall20") is not None:
        notes.append(f"recall@20 {r['recall20']:.4f}")
    if r.get("svd_s") is not None:
        notes.append(f"SVD factors {fmt(r['svd_s'], 's')}")
    if r.get("params_max_abs_diff") is not None:
        notes.append(f"params max |Δ| {r['params_max_abs_diff']:.2e}")
    if "met" in r:
        notes.append(("met " if r["met"] else "MISSED ") + (r.get("target_text") or f"≥ {r.get('target')}×"))
    if r.get("status"):
        notes.append(r["status"] + (f" (budget {r['budget_s']:.0f} s)" if r.get("budget_s") else ""))
    if r.get("error"):
        notes.append(str(r["error"]).splitlines()[-1][:200] if str(r["error"]).strip() else "error")
    return "; ".join(notes)


def write_summary(args: argparse.Namespace, header: dict[str, Any], total: float) -> Path:
    """DIR/gpu_check.md: the GPU named, then every row of this run in one table."""
    rows = run_rows(args.out, args.run_id)
    table = [[r.get("part", ""), r["name"], fmt(r["value"], r.get("unit", "")),
              f"{fmt(r['ratio'])}×" if r.get("ratio") is not None else "",
              r.get("reference", "") if r.get("ratio") is not None else "", _note(r)] for r in rows]
    failed = [r for r in rows if r["name"].startswith("part ") and r.get("status") != "ok"]
    lines = [f"# GPU check ({header['mode']}): {header['gpu']}", "",
             f"- GPU: **{header['gpu']}**, {header['gpu_memory']}; torch {header['torch']}, CUDA {header['cuda']}",
             f"- host: {header['cpu']}, {header['cores']} cores, {header['mem_gb']} GB RAM; git {header['git']}",
             f"- run {args.run_id}, started {header['started']}, budget {total:.0f} s; command: "
             f"`python benchmarks/gpu_check.py {' '.join(args.argv)}`".rstrip(), "",
             markdown_table(["part", "measurement", "figure", "ratio", "against (same run)", "note"], table)]
    for r in failed:
        lines += ["", f"### part {r['part']}: {r['status']}", "", "```", (r.get("tail") or "").rstrip(), "```"]
    path = args.out / f"{BENCH}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- command line


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / BENCH,
                   help="where gpu_check.jsonl / .md / .log go (default runs/benchmarks/gpu_check/)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a dry run (with --tiny)")
    p.add_argument("--tiny", action="store_true", help="the dry run's small shapes and few steps")
    p.add_argument("--data-root", type=Path, default=DATA_ROOT, help="datasets (default benchmarks/.data/)")
    p.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts, in this order")
    p.add_argument("--skip", nargs="+", choices=PARTS, help="leave these parts out")
    p.add_argument("--total", type=float, default=None, help="the run's total budget in s (default: 510; --tiny 240)")
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # a child process: run this part
    p.add_argument("--run-id", default=time.strftime("%Y%m%d-%H%M%S"), help=argparse.SUPPRESS)
    p.add_argument("--part-deadline", type=float, default=math.inf, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.data_root = args.data_root.resolve()
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    return run_part(args) if args.part else run_all(args)


if __name__ == "__main__":
    sys.exit(main())
