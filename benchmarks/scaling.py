"""(7) Scaling model: predicted step time, users/s and scaling efficiency per gradient strategy.

    python benchmarks/scaling.py --quick                 # compute at baby, bytes at baby (minutes)
    python benchmarks/scaling.py --full                  # compute at baby/sports/electronics, bytes at baby/electronics
    python benchmarks/scaling.py --full --results-dir benchmarks/results      # the figures the README quotes
    python benchmarks/scaling.py --model-only --results-dir benchmarks/results  # re-tabulate, measure nothing
    python benchmarks/scaling.py --model-only --network my-net:25:30 --compute my-gpu:80  # other parameters

Inputs, measured here:
- compute: one rank's `train_step` (ld4mrec_dist/step.py) in this process, one torch
  thread, at the shapes of `--compute-shapes`; a least-squares fit of the measured times
  against the step's FLOPs (`strategy.step_flops`: t = a·F_item + t₀, t₀ scaled by the
  item-independent FLOPs) extrapolates to the shapes not measured (the 10× Electronics
  catalogue always: its two 630,010 × 256 layers with Adam state do not fit beside the
  other sessions of this machine). Rows say which.
- bytes: 2 gloo processes run `train_step` with each strategy's hook (benchmarks/communication.py)
  and count every all-reduce and all-gather; compared with `scaling_model.collectives` at W = 2.
Inputs, documented (command-line parameters): link bandwidth and latency (`strategy.NETWORKS`:
g5.2xlarge's "up to 10 Gbps", its 5 Gbps single-flow cap, NVLink-class intra-node figures)
and GPU arithmetic rates (`strategy.COMPUTES`: assumed fractions of spec peaks, not measured).
Output: <results-dir>/scaling.jsonl (rows), scaling.md (tables), scaling.png (efficiency vs W).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS_DIR, Context, append_results, machine, markdown_table, row  # noqa: E402
from ld4mrec_dist import scaling_model as sm  # noqa: E402

BENCH = "scaling"
WORLDS = (1, 2, 4, 8, 16, 32, 64)
SCENARIOS = (  # (network, compute): the cluster file's workers; an NVLink node; CPU ranks as measured here
    ("g5.2xlarge", "a10g-bf16"),
    ("nvlink-a100", "a100-bf16"),
    ("g5.2xlarge", "cpu-measured"),
)
EXTRA_COMPUTES = {
    "a100-bf16": sm.Compute("a100-bf16", 1 / 156e12, 1 / 156e12, 1e-4,
                            "assumed: half of the A100's 312 TFLOPS dense bf16 peak, 0.1 ms fixed"),
}


# ---------------------------------------------------------------- compute, measured


def measure_compute(shape_name: str, steps: int, warmup: int = 2) -> dict[str, Any]:
    """Median seconds of one rank's `train_step` at a shape (1 thread, random features)."""
    import numpy as np
    import torch

    from benchmarks.communication import SHAPES, build_model, random_batch, random_features
    from ld4mrec_dist.build import build_optimizers
    from ld4mrec_dist.config import Config, ModelSection
    from ld4mrec_dist.sampler import SamplerHistory
    from ld4mrec_dist.step import train_step

    shape = sm.SHAPES[shape_name]
    n_users, n_items, d_text, d_image = SHAPES[shape_name]
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(n_users, n_items, random_features(n_items, d_text, d_image), shape.hidden)
        cfg = Config(model=ModelSection(hidden=shape.hidden))
        cfg.train.batch_size = shape.batch
        opts, history = build_optimizers(model, cfg), SamplerHistory.empty(model.schedule.steps, cfg.diffusion)
        rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
        cpu, wall = [], []
        for i in range(warmup + steps):
            users, rows = random_batch(rng, n_users, n_items, shape.batch, shape.nnz_per_user)
            c0, t0 = time.process_time(), time.perf_counter()
            train_step(model, model.cnet, opts, history, users, rows, gen, cfg)
            if i >= warmup:
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)
    # CPU seconds of this one-thread process: what the step costs a core of its own. On a
    # shared machine the wall time also holds the waits for a core (both are kept).
    return {"step_s": float(np.median(cpu)), "wall_s": float(np.median(wall)), "steps": steps,
            "cpu_s": cpu, "all_wall_s": wall}


def fit_compute(measured: dict[str, float]) -> sm.Compute:
    """t = a·F_item + t₀ over the measured shapes (same B, D and feature widths, so the
    item-independent FLOPs are one constant F_rest and t₀ / F_rest its rate). One shape:
    one rate for both parts."""
    import numpy as np

    names = list(measured)
    f_item = np.array([sm.step_flops(sm.SHAPES[n])[0] for n in names])
    f_rest = sm.step_flops(sm.SHAPES[names[0]])[1]
    t = np.array([measured[n] for n in names])
    if len(names) == 1:
        rate = t[0] / (f_item[0] + f_rest)
        return sm.Compute("cpu-measured", rate, rate, 0.0, f"one shape measured ({names[0]}): one FLOP rate")
    a, t0 = np.linalg.lstsq(np.stack([f_item, np.ones_like(f_item)], 1), t, rcond=None)[0]
    return sm.Compute("cpu-measured", float(a), max(float(t0), 0.0) / f_rest, 0.0,
                      f"least squares over {', '.join(names)} (1 thread, this machine)")


# ---------------------------------------------------------------- tables


def predictions(computes: dict[str, sm.Compute], networks: dict[str, sm.Network], scenarios, measured: dict[str, float],
                worlds=WORLDS) -> list[dict[str, Any]]:
    out = []
    for net_name, comp_name in scenarios:
        net, comp = networks[net_name], computes[comp_name]
        for shape in sm.SHAPES.values():
            use = measured.get(shape.name) if comp_name == "cpu-measured" else None
            source = ("measured" if use is not None else "FLOPs fit of the measured shapes"
                      if comp_name == "cpu-measured" else "assumed FLOP rate")
            for w in worlds:
                group = sm.best_item_group(shape, w, net, comp) if w > 1 else 1
                for s in sm.MODELLED:
                    p = sm.predict(s, shape, w, net, comp, compute_s=use, item_group=group if s == "item_parallel"
                                   else None)
                    out.append({**asdict(p), "scenario": f"{net_name} + {comp_name}", "compute_source": source,
                                "item_group": group if s == "item_parallel" else None,
                                "total_bytes": sum(p.bytes_per_step.values())})
    return out


def mib(x: float) -> str:
    return f"{x / 2**20:,.1f}" if x >= 2**20 / 10 else f"{x / 2**20:.3f}"


def summary_table(preds: list[dict], scenario: str, worlds=(2, 8, 64)) -> str:
    """Per shape and strategy: bytes per step at W = 8, step time and efficiency at `worlds`."""
    rows = []
    for shape in sm.SHAPES.values():
        for s in sm.MODELLED:
            sel = {p["world"]: p for p in preds if p["scenario"] == scenario and p["shape"] == shape.name
                   and p["strategy"] == s}
            if not sel:
                continue
            p8 = sel[8]
            ip = f" (G={p8['item_group']})" if s == "item_parallel" else ""
            rows.append([shape.name, f"{shape.n_items:,}", s + ip, mib(p8["total_bytes"]),
                         f"{sel[1]['step_s'] * 1e3:.3g}",
                         *(f"{sel[w]['step_s'] * 1e3:.3g} / {sel[w]['users_per_s']:,.0f} / {sel[w]['efficiency']:.2f}"
                           for w in worlds),
                         f"{p8['memory_bytes'] / 2**30:.2f}"])
    head = ["shape", "items", "strategy", "MiB/step/rank (W=8)", "ms/step W=1",
            *(f"W={w}: ms/step / users/s / eff." for w in worlds), "GiB/rank (W=8)"]
    return markdown_table(head, rows)


def efficiency_table(preds: list[dict], scenarios: list[str], worlds=(2, 8, 64)) -> str:
    """Per shape and strategy: scaling efficiency at `worlds` in each scenario (the README's table)."""
    rows = []
    for shape in sm.SHAPES.values():
        for s in sm.MODELLED:
            cells = []
            for sc in scenarios:
                sel = {p["world"]: p for p in preds if p["scenario"] == sc and p["shape"] == shape.name
                       and p["strategy"] == s}
                cells.append(" / ".join(f"{sel[w]['efficiency']:.2f}" for w in worlds) if sel else "")
            rows.append([shape.name, f"{shape.n_items:,}", s, *cells])
    head = ["shape", "items", "strategy", *(f"{sc}: W = {' / '.join(map(str, worlds))}" for sc in scenarios)]
    return markdown_table(head, rows)


def batch_table(computes: dict[str, sm.Compute], networks: dict[str, sm.Network], scenario: tuple[str, str],
                shapes=("electronics", "electronics_x10"), batches=(256, 512, 1024, 4096), world: int = 8) -> str:
    """Bigger per-rank batches: at W = `world`, users/s as a multiple of one rank at B = 256
    (the speed-up a user sees) and the scaling efficiency, per strategy and per-rank B. The
    gradient bytes of a step do not depend on B, its arithmetic grows with B."""
    net, comp = networks[scenario[0]], computes[scenario[1]]
    rows = []
    for name in shapes:
        base = sm.SHAPES[name]
        one_rank = sm.predict("ddp", base, 1, net, comp).users_per_s
        for s in sm.MODELLED:
            cells = []
            for b in batches:
                shape = replace(base, batch=b)
                group = sm.best_item_group(shape, world, net, comp) if s == "item_parallel" else None
                p = sm.predict(s, shape, world, net, comp, item_group=group)
                cells.append(f"{p.users_per_s / one_rank:.1f}× / {p.efficiency:.2f}")
            rows.append([name, s, *cells])
    head = ["shape", "strategy", *(f"B = {b}: speed-up / eff." for b in batches)]
    return markdown_table(head, rows)


def check_table(measured_bytes: dict[str, dict[str, Any]]) -> tuple[str, list[dict]]:
    """Measured (2 gloo processes) against predicted bytes and calls per step."""
    from benchmarks.communication import predicted

    rows, out = [], []
    for shape_name, per in measured_bytes.items():
        for s, m in per.items():
            p = predicted(shape_name, s)
            for key in ("allreduce", "allgather"):
                ok = abs(m[key] - p[key]) <= 1e-9 * max(p[key], 1) and m[f"{key}_calls"] == p[f"{key}_calls"]
                rows.append([shape_name, s, key.replace("all", "all-"), f"{m[key]:,.0f}", f"{p[key]:,.0f}",
                             f"{m[f'{key}_calls']:g}", f"{p[f'{key}_calls']:g}", "yes" if ok else "NO"])
                out.append({"shape": shape_name, "strategy": s, "collective": key, "measured_bytes": m[key],
                            "predicted_bytes": p[key], "measured_calls": m[f"{key}_calls"],
                            "predicted_calls": p[f"{key}_calls"], "equal": ok, "step_s_2proc": m["step_s"]})
    head = ["shape", "strategy", "collective", "bytes measured", "bytes predicted", "calls measured",
            "calls predicted", "equal"]
    return markdown_table(head, rows), out


def plot(preds: list[dict], scenarios: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(sm.SHAPES)
    fig, axes = plt.subplots(len(scenarios), len(shapes), figsize=(4 * len(shapes), 3.2 * len(scenarios)),
                             sharex=True, sharey=True, squeeze=False)
    for i, sc in enumerate(scenarios):
        for j, sh in enumerate(shapes):
            ax = axes[i][j]
            for s in sm.MODELLED:
                pts = sorted((p["world"], p["efficiency"]) for p in preds
                             if p["scenario"] == sc and p["shape"] == sh and p["strategy"] == s)
                ax.plot([w for w, _ in pts], [e for _, e in pts], marker="o", ms=3, label=s)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylim(1e-3, 1.5)
            ax.grid(True, which="both", alpha=0.3)
            if i == 0:
                ax.set_title(f"{sh} (|I| = {sm.SHAPES[sh].n_items:,})", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{sc}\nscaling efficiency", fontsize=8)
            if i == len(scenarios) - 1:
                ax.set_xlabel("W (ranks)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("LD4MRec scaling model: users/s ÷ (W × one rank's users/s), d = 256, B = 256 per rank", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- entry points


def parse_network(text: str) -> sm.Network:
    name, gbps, lat = text.split(":")
    return sm.Network(name, float(gbps), float(lat), "command line")


def parse_compute(text: str) -> sm.Compute:
    name, tflops = text.split(":")
    rate = 1 / (float(tflops) * 1e12)
    return sm.Compute(name, rate, rate, 0.0, "command line (effective TFLOPS)")


def run(ctx: Context, compute_shapes: list[str] | None = None, byte_shapes: list[str] | None = None,
        networks: dict[str, sm.Network] | None = None, computes: dict[str, sm.Compute] | None = None,
        scenarios=SCENARIOS, model_only: bool = False, out_dir: Path | None = None) -> list[dict]:
    """Measure (unless `model_only`), predict, write scaling.md / scaling.png; result rows."""
    from benchmarks.communication import measure

    compute_shapes = compute_shapes or (["baby"] if ctx.quick else ["baby", "sports", "electronics"])
    byte_shapes = byte_shapes or (["baby"] if ctx.quick else ["baby", "electronics"])
    networks = {**sm.NETWORKS, **(networks or {})}
    computes = {**sm.COMPUTES, **EXTRA_COMPUTES, **(computes or {})}
    out_dir = out_dir or ctx.results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    inputs_run_id = ctx.run_id
    if model_only:
        prev = _latest(out_dir)
        inputs_run_id = prev["run_id"]
        measured_compute, wall_compute = prev["measured_compute_s"], prev.get("measured_wall_s", {})
        measured_bytes = prev["measured_bytes"]
    else:
        measured_compute, measured_bytes, wall_compute = {}, {}, {}
        for name in compute_shapes:
            res = measure_compute(name, 3 if ctx.quick else 5)
            measured_compute[name] = res["step_s"]
            wall_compute[name] = res["wall_s"]
            print(f"[scaling] compute {name}: {res['step_s'] * 1e3:.1f} ms CPU/step, {res['wall_s'] * 1e3:.1f} ms "
                  f"wall (1 thread, load average {os.getloadavg()[0]:.1f})", flush=True)
        for name in byte_shapes:
            measured_bytes[name] = measure(name, 5 if ctx.quick else 6)
            print(f"[scaling] bytes {name}: measured", flush=True)
    fit = fit_compute(measured_compute)
    computes["cpu-measured"] = fit
    check_md, check_rows = check_table(measured_bytes)
    print("\nmeasured (2 gloo processes) vs predicted bytes per step:\n" + check_md, flush=True)
    held_out: dict[str, Any] = {}
    if len(measured_compute) > 2:  # the fit without the largest shape predicts it
        names = sorted(measured_compute, key=lambda n: sm.SHAPES[n].n_items)
        sub = fit_compute({n: measured_compute[n] for n in names[:-1]})
        held_out = {"shape": names[-1], "measured_s": measured_compute[names[-1]],
                    "predicted_s": sub.step_s(sm.SHAPES[names[-1]])}
        print(f"[scaling] compute fit on {names[:-1]} predicts {names[-1]}: {held_out['predicted_s'] * 1e3:.0f} ms, "
              f"measured {held_out['measured_s'] * 1e3:.0f} ms", flush=True)
    preds = predictions(computes, networks, scenarios, measured_compute)
    scen_names = [f"{n} + {c}" for n, c in scenarios]
    md = [f"# Scaling model (run {ctx.run_id}, {ctx.mode}; inputs measured in run {inputs_run_id})", "",
          "Measured one-rank compute (CPU seconds of one thread on this machine; wall times on the shared "
          "machine: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in wall_compute.items()) + "): "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in measured_compute.items())
          + f"; fit ({fit.source}): t = 10·B·I·D / {1 / fit.item_s_per_flop / 1e9:.1f} GFLOP/s + "
            f"{fit.rest_s_per_flop * sm.step_flops(sm.SHAPES['baby'])[1] * 1e3:.0f} ms (the item-independent part "
            f"at B = 256, d = 256, text 384 + image 4096; scaled by its FLOPs elsewhere)"
          + (f"; fitted without {held_out['shape']}, it predicts {held_out['predicted_s'] * 1e3:.0f} ms there "
             f"(measured {held_out['measured_s'] * 1e3:.0f} ms)." if held_out else "."),
          "", "Networks: " + "; ".join(f"{n.name} {n.gbps:g} Gbps, {n.latency_us:g} µs ({n.source})"
                                       for n in networks.values()),
          "", "Computes: " + "; ".join(f"{c.name}: {c.source}" for c in computes.values()), ""]
    md += ["## Scaling efficiency (users/s ÷ W × one rank's users/s)", "", efficiency_table(preds, scen_names), ""]
    for sc in scen_names:
        md += [f"## {sc}", "", summary_table(preds, sc), ""]
    md += [f"## Bigger per-rank batches (W = 8, {SCENARIOS[0][0]} + {SCENARIOS[0][1]})", "",
           "Users/s at W = 8 as a multiple of one rank at B = 256, and the scaling efficiency at that B. Users/s "
           "is not time to quality: that also needs the steps to the best epoch at the global batch 8·B, measured "
           "on real data by benchmarks/batch_quality.py (on MovieLens-1M they did not fall from 256 to 4,096).", "",
           batch_table(computes, networks, SCENARIOS[0]), ""]
    md += ["## Bytes per step: measured (2 gloo processes) vs the model", "", check_md, ""]
    (out_dir / "scaling.md").write_text("\n".join(md) + "\n")
    plot(preds, scen_names, out_dir / "scaling.png")
    if not model_only:
        (out_dir / "scaling-inputs.json").write_text(json.dumps(
            {"run_id": ctx.run_id, "measured_compute_s": measured_compute, "measured_wall_s": wall_compute,
             "loadavg": os.getloadavg()[0], "measured_bytes": measured_bytes,
             "fit": asdict(fit), "held_out": held_out}, indent=1, default=str) + "\n")
    rows.append(row(BENCH, "compute fit (cpu-measured)", 1 / fit.item_s_per_flop / 1e9, "GFLOP/s",
                    measured_compute_s=measured_compute, fit=asdict(fit), held_out=held_out))
    rows += [row(BENCH, f"bytes check: {r['shape']} {r['strategy']} {r['collective']}", r["measured_bytes"], "B",
                 **r) for r in check_rows]
    keep = ("scenario", "shape", "strategy", "world", "item_group", "compute_s", "comm_s", "step_s", "users_per_s",
            "efficiency", "total_bytes", "memory_bytes", "compute_source")
    rows.append(row(BENCH, "predictions (scenario × shape × strategy × W)", len(preds), "rows",
                    inputs_run_id=inputs_run_id, predictions=[{k: p[k] for k in keep} for p in preds]))
    print(f"[scaling] wrote {out_dir / 'scaling.md'}, {out_dir / 'scaling.png'}", flush=True)
    return rows


def _latest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "scaling-inputs.json"
    if not path.exists():
        raise SystemExit(f"--model-only needs {path} from an earlier measuring run")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="compute and bytes at baby only")
    mode.add_argument("--full", action="store_true",
                      help="compute at baby/sports/electronics, bytes at baby/electronics")
    mode.add_argument("--model-only", action="store_true", help="measure nothing: re-tabulate the last inputs")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--network", action="append", default=[], type=parse_network, metavar="NAME:GBPS:LATENCY_US",
                   help="another link (repeatable), e.g. efa:100:15")
    p.add_argument("--compute", action="append", default=[], type=parse_compute, metavar="NAME:TFLOPS",
                   help="another device at this effective rate (repeatable), e.g. h100-bf16:400")
    p.add_argument("--scenario", action="append", default=[], metavar="NETWORK+COMPUTE",
                   help="pairs to tabulate (default: " + ", ".join(f"{n}+{c}" for n, c in SCENARIOS) + ")")
    args = p.parse_args(argv)
    ctx = Context(mode="full" if args.full else "model-only" if args.model_only else "quick",
                  run_id=time.strftime("%Y%m%d-%H%M%S"),
                  results_dir=args.results_dir)
    scenarios = tuple(tuple(s.split("+", 1)) for s in args.scenario) or SCENARIOS
    rows = run(ctx, networks={n.name: n for n in args.network}, computes={c.name: c for c in args.compute},
               scenarios=scenarios, model_only=args.model_only)
    append_results(ctx, BENCH, rows, machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
