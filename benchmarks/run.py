"""Run the benchmarks, append their rows as JSON lines, print a table; on request, update docs/performance.md.

    python benchmarks/run.py --quick          # every benchmark at reduced sizes
    python benchmarks/run.py --full           # the sizes the README quotes for --full
    python benchmarks/run.py --quick --only throughput loader
    python benchmarks/run.py --quick --results-dir benchmarks/results --update-readme   # record
    python benchmarks/run.py --readme-only --results-dir benchmarks/results   # docs/performance.md from rows

Rows go to runs/benchmarks/<bench>.jsonl (untracked) unless --results-dir says otherwise;
docs/performance.md's measured section is rewritten only with --update-readme / --readme-only,
so a plain run leaves the working tree clean.

Starts its own local Ray (`ray.init(address="local", num_cpus=2)`), never attaches to or
stops another one. Each result row is a JSON line; timings are never asserted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402 - after the sys.path line above
    RESULTS_DIR,
    Context,
    append_results,
    fmt,
    gpu_available,
    latest_results,
    machine,
    markdown_table,
    text_table,
)

BENCHES = ["throughput", "loader", "memory", "svd", "inference", "communication", "roofline", "scaling"]
README = ROOT / "docs" / "performance.md"  # the page that quotes the figures
START, END = "<!-- perf:start -->", "<!-- perf:end -->"


def start_ray() -> None:
    import ray

    from ld4mrec_dist.train.launch import RAY_TRAIN_FAST_ENV

    env = {**RAY_TRAIN_FAST_ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for key, value in RAY_TRAIN_FAST_ENV.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env})


def table_rows(results: dict[str, list[dict]]) -> list[list[str]]:
    rows = []
    for bench in BENCHES:
        for r in results.get(bench, []):
            target = r.get("target_text") or (f"≥ {r['target']}×" if r.get("target") is not None else "")
            met = "" if "met" not in r else ("met" if r["met"] else "MISSED")
            ratio = fmt(r.get("ratio")) + "×" if r.get("ratio") is not None else ""
            reference = r.get("reference", "") if ratio else ""
            rows.append([f"{bench} ({r.get('mode', '?')})", r["name"], fmt(r["value"], r.get("unit", "")), ratio,
                         reference, target, met])
    return rows


HEADER = ["bench", "measurement", "figure", "ratio", "against (same run)", "target", "status"]


def profile_lines(results: dict[str, list[dict]]) -> list[str]:
    """The step profiles of the throughput harness, as text lines (ms per step)."""
    lines = []
    for r in results.get("throughput", []):
        if "profile_s" in r:
            lines.append(f"{r['name']}: {r['step_s'] * 1e3:.1f} ms/step")
            lines += [f"    {k:<45s} {v * 1e3:8.2f} ms" for k, v in r["profile_s"].items()]
            lines.append("    " + profile_summary(r["profile_s"], r["step_s"]))
    return lines


GROUPS = {"model compute (fwd+bwd+Adam)": ("5", "6", "8"), "loader (rows+csr)": ("1", "2"),
          "sampler": ("4", "9"), "z_in all-gather": ("7",)}


def profile_summary(pieces: dict[str, float], step_s: float) -> str:
    """Share of the step per group of pieces (densify is inside forward, shown aside)."""
    share = {g: sum(v for k, v in pieces.items() if k.split()[0] in ids) / step_s for g, ids in GROUPS.items()}
    dens = sum(v for k, v in pieces.items() if k.startswith("3 ")) / step_s
    groups = ", ".join(f"{g} {100 * v:.1f} %" for g, v in share.items())
    return f"= {groups} (densify {100 * dens:.1f} %, inside forward)"


def readme_section(results: dict[str, list[dict]], results_dir: Path) -> str:
    any_row = next((rs[0] for rs in results.values() if rs), None)
    if any_row is None:
        return "(no results yet: run `python benchmarks/run.py --quick`)"
    m = any_row["machine"]
    modes = sorted({rs[0]["mode"] for rs in results.values() if rs})
    runs = sorted({rs[0]["run_id"] for rs in results.values() if rs})
    parts = [
        f"Measured by `python benchmarks/run.py --{'/--'.join(modes)}` (run {', '.join(runs)}) on "
        f"{m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB RAM, {m['gpu']}, torch {m['torch']}, ray {m['ray']} "
        f"(a shared machine: absolute figures are noisy, each ratio is taken side by side in one run). "
        "Reproduce with `python benchmarks/run.py --quick` (reduced sizes, < 10 min) or `--full`; raw rows "
        f"in `{display_path(results_dir)}/*.jsonl`, what each row measures in `benchmarks/README.md`.",
        "",
        markdown_table(HEADER, table_rows(results)),
    ]
    prof = profile_lines(results)
    if prof:
        parts += ["", "Where a training step goes (throughput harness, baby shape):", "", "```", *prof, "```"]
    return "\n".join(parts)


def display_path(path: Path) -> str:
    """`path` relative to the repository root where it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write_readme(section: str) -> bool:
    text = README.read_text()
    if START not in text or END not in text:
        print(f"[bench] {README}: markers {START} / {END} not found; README left alone", file=sys.stderr)
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + START + "\n" + section + "\n" + END + tail)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="reduced sizes, under 10 minutes on 2 cores")
    mode.add_argument("--full", action="store_true", help="full sizes (tens of minutes)")
    mode.add_argument("--readme-only", action="store_true",
                      help="run nothing; regenerate docs/performance.md's measured section from --results-dir")
    p.add_argument("--only", nargs="+", choices=BENCHES, help="run these measurements only")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                   help=f"where rows are appended and read (default {display_path(RESULTS_DIR)}, untracked)")
    p.add_argument("--update-readme", action="store_true",
                   help="rewrite docs/performance.md's measured section from the latest rows")
    args = p.parse_args(argv)

    failed: list[str] = []
    if not args.readme_only:
        ctx = Context(mode="full" if args.full else "quick", run_id=time.strftime("%Y%m%d-%H%M%S"),
                      gpu=gpu_available(), results_dir=args.results_dir)
        mach = machine()
        print(json.dumps({"run_id": ctx.run_id, "mode": ctx.mode, "machine": mach}), flush=True)
        start_ray()
        t_all = time.perf_counter()
        for bench in args.only or BENCHES:
            t0 = time.perf_counter()
            try:
                rows = importlib.import_module(f"benchmarks.{bench}").run(ctx)
            except Exception:  # noqa: BLE001 - one failed measurement must not hide the others
                traceback.print_exc()
                rows = [{"bench": bench, "name": f"{bench} FAILED", "value": None, "unit": "",
                         "error": traceback.format_exc(limit=3)}]
                failed.append(bench)
            for r in rows:
                r["bench_wall_s"] = time.perf_counter() - t0
                print(json.dumps(r, default=str), flush=True)
            append_results(ctx, bench, rows, mach)
            print(f"[bench] {bench}: {time.perf_counter() - t0:.0f}s", flush=True)
        print(f"[bench] all: {time.perf_counter() - t_all:.0f}s (GPU: {mach['gpu']})", flush=True)
    results = latest_results(BENCHES, args.results_dir)
    print("\n" + text_table(HEADER, table_rows(results)))
    prof = profile_lines(results)
    if prof:
        print("\n" + "\n".join(prof))
    if args.update_readme or args.readme_only:
        write_readme(readme_section(results, args.results_dir))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
