"""(7) The training step against its GEMM roofline, one thread, Baby shape.

Question: how close does one `train_step` (the function the loop runs) come to the time of
its unavoidable matrix products? Reference, measured bare in the same process, in blocks
alternating with the steps: the five [B, I]×[I, D]-sized GEMMs of a step (FC_in forward
and weight gradient; FC_out forward, weight gradient and input gradient; x_t needs no
gradient), and, beside it, every GEMM of the step (the five plus the BD and BG layers: the
image MLPs' 4096-wide inputs make those a large share). The GEMM shapes are read off the
model's own `nn.Linear` calls (forward hooks), not written down here.

Variants (same init, same batches): `before` = `model.fused_forward=false,
train.fused_adam=false` (the straightforward code path), each optimisation alone, and
`after` = the defaults. Per variant: ms per step, the ratio five-GEMMs / step, the
per-piece split `train_step` reports through its `timer`, and a torch.profiler split
(GEMMs, random numbers, optimizer, other ops, and the Python/dispatch rest). Rows go to
`<results dir>/roofline.jsonl`; the ratios, not the absolute times, are what survives a
loaded machine.

    python benchmarks/run.py --quick --only roofline          # with the other benchmarks
    python -m benchmarks.roofline [--full] [--results-dir DIR]  # alone, no Ray

Shapes: U users, I items, B batch, D hidden, K SVD rank, D_m feature widths.

`measure` also takes another `Shape`, a device and bf16 autocast (benchmarks/gpu_check.py:
the same step and bare GEMMs on a GPU, the GEMMs' operands then in the step's precision,
timings synchronised around each block).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, Context, append_results, machine, row
from benchmarks.harness import _sync

BENCH = "roofline"
# Baby (data_pipeline.synthetic.SHAPES): users, items, text and image widths; the train
# rows hold 160,792 · 0.8 / 19,445 ≈ 6.6 items per user.
USERS, ITEMS, D_TEXT, D_IMAGE, PER_USER = 19_445, 7_050, 384, 4_096, 6.6
BATCH, HIDDEN, SVD_RANK = 256, 256, 64


@dataclass(frozen=True)
class Shape:
    """The sizes of a roofline measurement (random inputs of a dataset's real widths)."""

    name: str
    users: int
    items: int
    d_text: int
    d_image: int
    per_user: float  # train items per user
    batch: int = BATCH
    hidden: int = HIDDEN
    svd_rank: int = SVD_RANK


BABY = Shape("baby", USERS, ITEMS, D_TEXT, D_IMAGE, PER_USER)
# Electronics: 1,689,188 · 0.8 / 192,403 ≈ 7.0 train items per user.
ELECTRONICS = Shape("electronics", 192_403, 63_001, 384, 4_096, 7.0)
TARGET = 0.7
VARIANTS: dict[str, list[str]] = {
    "before": ["model.fused_forward=false", "train.fused_adam=false"],
    "fused Adam only": ["model.fused_forward=false", "train.fused_adam=true"],
    "fused forward only": ["model.fused_forward=true", "train.fused_adam=false"],
    "after": [],
}
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul"}
RNG_OPS = {"aten::normal_", "aten::uniform_", "aten::geometric_", "aten::multinomial", "aten::random_",
           "aten::exponential_", "aten::bernoulli_"}


@dataclass
class Sizes:
    rounds: int  # alternating blocks (bare GEMMs, each variant's steps)
    steps: int  # steps per block
    warmup: int
    profile_steps: int


QUICK, FULL = Sizes(rounds=4, steps=2, warmup=3, profile_steps=3), Sizes(rounds=10, steps=3, warmup=4, profile_steps=6)


# ---------------------------------------------------------------- setup


def _inputs(seed: int = 0, shape: Shape = BABY) -> dict[str, Any]:
    """Item features of the real widths, V_K, degrees, and a few batches (CSR) of the shape."""
    import scipy.sparse as sp

    from ld4mrec_dist.rows import to_torch_csr

    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, b = shape.items, shape.batch
    batches = []
    for _ in range(8):
        users = np.sort(rng.choice(shape.users, b, replace=False))
        rows = sp.random(b, n, density=shape.per_user / n, format="csr", random_state=rng, dtype=np.float32)
        rows.data[:] = 1.0
        batches.append((torch.from_numpy(users), to_torch_csr(rows)))
    return {"features": {"text": torch.randn(n, shape.d_text, generator=g),
                         "image": torch.randn(n, shape.d_image, generator=g)},
            "factors": torch.randn(n, shape.svd_rank, generator=g) / shape.svd_rank,
            "degree": torch.full((n,), 5.0), "batches": batches, "shape": shape}


class Trainee:
    """One variant: model, optimizers, sampler history and generator, as the loop holds them
    (on `device`; `bf16`: the step under bf16 autocast, as `scaling.bf16` runs it)."""

    def __init__(self, overrides: list[str], inputs: dict[str, Any], seed: int = 0, device: str = "cpu",
                 bf16: bool = False):
        from ld4mrec_dist.build import build_optimizers
        from ld4mrec_dist.config import load_config
        from ld4mrec_dist.model import LD4MRec
        from ld4mrec_dist.sampler import SamplerHistory

        shape: Shape = inputs["shape"]
        self.shape, self.bf16 = shape, bf16
        self.cfg = load_config(None, [f"model.hidden={shape.hidden}", f"train.batch_size={shape.batch}",
                                      f"model.svd_rank={shape.svd_rank}", *overrides])
        torch.manual_seed(seed)  # same init in every variant
        self.model = LD4MRec(self.cfg.model, self.cfg.diffusion, shape.users, shape.items,
                             item_factors=inputs["factors"], item_features=inputs["features"],
                             item_degree=inputs["degree"]).to(device)
        self.model.train()
        self.opts = build_optimizers(self.model, self.cfg)
        self.history = SamplerHistory.empty(self.model.schedule.steps, self.cfg.diffusion)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.batches = [(users.to(device), rows.to(device)) for users, rows in inputs["batches"]]
        self.done = 0

    def step(self, timer: Callable[[str], Any] | None = None) -> None:
        from ld4mrec_dist.step import train_step

        users_B, rows_BI = self.batches[self.done % len(self.batches)]
        train_step(self.model, self.model.cnet, self.opts, self.history, users_B, rows_BI, self.gen, self.cfg,
                   autocast=self.bf16, timer=timer)
        self.done += 1


@dataclass
class Gemm:
    """One matrix product of a step: [m, k] × [k, n] (+ a bias row when `bias`); `big`:
    [B, I]×[I, D]-sized, one of the three dimensions is the item count."""

    name: str
    m: int
    k: int
    n: int
    bias: bool = False
    big: bool = False

    @property
    def flop(self) -> int:
        return 2 * self.m * self.k * self.n


def step_gemms(trainee: Trainee) -> list[Gemm]:
    """Every dense GEMM of a training step, from C-Net's `nn.Linear` calls: forward
    (addmm), weight gradient, and input gradient where the input requires one."""
    seen: list[tuple[str, torch.Size, int, bool]] = []
    hooks = [mod.register_forward_hook(
        lambda m, args, _out, name=name: seen.append((name, args[0].shape, m.out_features, args[0].requires_grad)))
        for name, mod in trainee.model.cnet.named_modules() if isinstance(mod, torch.nn.Linear)]
    try:
        trainee.step()
    finally:
        for h in hooks:
            h.remove()
    gemms = []
    for name, shape, n_out, needs_input_grad in seen:
        b, n_in = shape[0], shape[-1]
        big = trainee.shape.items in (b, n_in, n_out)
        gemms.append(Gemm(f"{name} forward", b, n_in, n_out, bias=True, big=big))
        gemms.append(Gemm(f"{name} weight grad", n_out, b, n_in, big=big))
        if needs_input_grad:
            gemms.append(Gemm(f"{name} input grad", b, n_out, n_in, big=big))
    return gemms


def bare(gemms: list[Gemm], device: str = "cpu", dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    """The products alone on random operands (on `device`, in `dtype`), fresh outputs as in the model."""
    ops = []
    for g in gemms:
        a, b = (torch.randn(g.m, g.k, device=device, dtype=dtype),
                torch.randn(g.k, g.n, device=device, dtype=dtype))
        ops.append((torch.randn(g.n, device=device, dtype=dtype) if g.bias else None, a, b))

    def run() -> None:
        for bias, a, b in ops:
            if bias is None:
                torch.mm(a, b)
            else:
                torch.addmm(bias, a, b)

    return run


# ---------------------------------------------------------------- measurement


def time_block(fn: Callable[[], None], n: int, device: str = "cpu") -> float:
    """Seconds per call of n calls (the device's queue drained before and after)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / n


def profile_split(trainee: Trainee, steps: int) -> dict[str, Any]:
    """ms per step by kind (an op's self time, attributed to `optimizer` when it runs under
    an optimizer's step), the rest of the wall time as `python/dispatch`, and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainee.step()
        wall = time.perf_counter() - t0
    split = {"GEMM": 0.0, "random numbers": 0.0, "optimizer": 0.0, "other ops": 0.0}
    for ev in prof.events():
        self_ms = ev.self_cpu_time_total / 1e3
        parent, in_opt = ev, False
        while parent is not None:
            if parent.name.startswith("Optimizer.step#"):
                in_opt = True
                break
            parent = parent.cpu_parent
        kind = ("optimizer" if in_opt else "GEMM" if ev.name in GEMM_OPS
                else "random numbers" if ev.name in RNG_OPS else "other ops")
        split[kind] += self_ms
    split = {k: v / steps for k, v in split.items()}
    split["python/dispatch"] = max(wall * 1e3 / steps - sum(split.values()), 0.0)
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    ops = [{"op": e.key, "calls_per_step": e.count / steps, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps}
           for e in top]
    return {"split_ms": split, "top_ops": ops, "wall_ms": wall * 1e3 / steps}


def measure(sizes: Sizes, variants: dict[str, list[str]] | None = None, shape: Shape = BABY,
            device: str = "cpu", bf16: bool = False) -> dict[str, Any]:
    """Everything, side by side in this process, with one torch thread (the CPU side of a
    GPU step too). `bf16`: the steps under bf16 autocast and the bare GEMMs in bf16.
    The profiler split (CPU self times) is left out on a GPU, where it would time launches."""
    from ld4mrec_dist.timing import PieceTimer

    variants = variants or VARIANTS
    dtype = torch.bfloat16 if bf16 else torch.float32
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inputs = _inputs(shape=shape)
        trainees = {name: Trainee(over, inputs, device=device, bf16=bf16) for name, over in variants.items()}
        gemms = step_gemms(next(iter(trainees.values())))
        big = [g for g in gemms if g.big]
        assert len(big) == 5, f"expected the five [B, I]×[I, D] GEMMs, found {[g.name for g in big]}"
        refs = {"five GEMMs": bare(big, device, dtype), "all GEMMs": bare(gemms, device, dtype)}
        for fn in refs.values():
            fn()
        timers = {name: PieceTimer() for name in trainees}
        for tr in trainees.values():
            for _ in range(sizes.warmup):
                tr.step()
        # Each variant's block of steps right after its own blocks of the bare GEMMs, the
        # variants in alternating order: a ratio compares blocks a few seconds apart.
        samples: dict[str, dict[str, list[float]]] = {name: {"five": [], "all": [], "step": []} for name in trainees}
        for r in range(sizes.rounds):
            for name in (list(trainees) if r % 2 == 0 else list(trainees)[::-1]):
                samples[name]["five"].append(time_block(refs["five GEMMs"], sizes.steps, device))
                samples[name]["all"].append(time_block(refs["all GEMMs"], sizes.steps, device))
                samples[name]["step"].append(time_block(functools.partial(trainees[name].step, timers[name]),
                                                        sizes.steps, device))
        n_timed = sizes.rounds * sizes.steps
        five = [f for s in samples.values() for f in s["five"]]
        every = [a for s in samples.values() for a in s["all"]]
        out: dict[str, Any] = {
            "gemms": [vars(g) for g in gemms], "shape": vars(shape), "device": device,
            "precision": "bf16" if bf16 else "fp32",
            "five_gemms_ms": 1e3 * statistics.median(five), "all_gemms_ms": 1e3 * statistics.median(every),
            "five_gemms_flop": sum(g.flop for g in big), "all_gemms_flop": sum(g.flop for g in gemms),
            "variants": {}}
        for name, tr in trainees.items():
            s = samples[name]
            out["variants"][name] = {
                "overrides": variants[name],
                "step_ms": 1e3 * statistics.median(s["step"]),
                # per round, the ratio of blocks run back to back, then the median
                "ratio_five": statistics.median(f / t for f, t in zip(s["five"], s["step"], strict=True)),
                "ratio_all": statistics.median(a / t for a, t in zip(s["all"], s["step"], strict=True)),
                "pieces_ms": {k: 1e3 * v / n_timed for k, v in timers[name].total.items()},
                "profile": (profile_split(tr, sizes.profile_steps)
                            if sizes.profile_steps and torch.device(device).type == "cpu" else None),
            }
        return out
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- report


def tflops(res: dict[str, Any], which: str = "five") -> float:
    """Achieved TFLOP/s of the bare GEMMs (`five` or `all`)."""
    return res[f"{which}_gemms_flop"] / (res[f"{which}_gemms_ms"] * 1e-3) / 1e12


def rows_of(res: dict[str, Any], tag: str = "", target: float | None = TARGET,
            bench: str = BENCH) -> list[dict[str, Any]]:
    """The result rows; `tag` prefixes every name (another device or precision), `target`
    is the five-GEMMs/step target of the `before` and `after` rows."""
    s = res["shape"]
    shape = {"shape": s["name"], "users": s["users"], "items": s["items"], "batch": s["batch"],
             "hidden": s["hidden"], "threads": 1, "device": res["device"], "precision": res["precision"]}
    out = [row(bench, f"{tag}five [B,I]x[I,D] GEMMs of a step, bare", res["five_gemms_ms"], "ms",
               tflops=tflops(res), flop=res["five_gemms_flop"], **shape),
           row(bench, f"{tag}all GEMMs of a step, bare", res["all_gemms_ms"], "ms", tflops=tflops(res, "all"),
               flop=res["all_gemms_flop"], gemms=res["gemms"], **shape),
           row(bench, f"{tag}five / all GEMMs: the ratio of a step that would be its GEMMs alone",
               res["five_gemms_ms"] / res["all_gemms_ms"], "×", **shape)]
    for name, v in res["variants"].items():
        out.append(row(bench, f"{tag}train_step, {name}", v["step_ms"], "ms", ratio=v["ratio_five"],
                       target=target if name in ("before", "after") else None,
                       reference="five GEMMs bare (roofline)", ratio_all_gemms=v["ratio_all"],
                       overrides=v["overrides"], pieces_ms=v["pieces_ms"], profile=v["profile"], **shape))
    return out


def report(res: dict[str, Any]) -> str:
    s = res["shape"]
    lines = [f"bare: five [B,I]x[I,D] GEMMs {res['five_gemms_ms']:.3g} ms ({tflops(res):.3g} TFLOP/s), all GEMMs "
             f"of the step {res['all_gemms_ms']:.3g} ms ({s['name']}, B = {s['batch']}, D = {s['hidden']}, "
             f"{res['device']}, {res['precision']}, 1 thread); a step that were its GEMMs alone "
             f"would be at {res['five_gemms_ms'] / res['all_gemms_ms']:.2f}x of the five", "",
             f"{'variant':<20s} {'step ms':>8s} {'five/step':>10s} {'all/step':>9s}   pieces (train_step timer, ms)"]
    for name, v in res["variants"].items():
        pieces = ", ".join(f"{k} {t:.3g}" for k, t in v["pieces_ms"].items())
        lines.append(f"{name:<20s} {v['step_ms']:8.3g} {v['ratio_five']:9.2f}x {v['ratio_all']:8.2f}x   {pieces}")
    lines.append("")
    for name, v in res["variants"].items():
        if v["profile"] is None:
            continue
        split = ", ".join(f"{k} {t:.1f}" for k, t in v["profile"]["split_ms"].items())
        lines.append(f"profile, {name} (ms/step, under the profiler): {split}")
        if name in ("before", "after"):
            lines += [f"    {o['op']:<38s} {o['calls_per_step']:6.1f}/step {o['self_ms_per_step']:8.2f} ms"
                      for o in v["profile"]["top_ops"]]
    return "\n".join(lines)


def run(ctx: Context) -> list[dict[str, Any]]:
    res = measure(QUICK if ctx.quick else FULL)
    print(report(res), flush=True)
    return rows_of(res)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="more rounds (default: the --quick sizes)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                   help="where roofline.jsonl is appended (default runs/benchmarks/, untracked)")
    args = p.parse_args(argv)
    ctx = Context(mode="full" if args.full else "quick", run_id=time.strftime("%Y%m%d-%H%M%S"),
                  results_dir=args.results_dir)
    rows = run(ctx)
    path = append_results(ctx, BENCH, rows, machine())
    print(f"[bench] {BENCH}: {len(rows)} rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
