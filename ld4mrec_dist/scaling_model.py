"""The scaling model: what each `scaling.strategy` costs per step (bytes, time, memory) as
pure functions of the shapes, and the `auto` choice made from it. The driver resolves
`auto` once at start-up (`resolve_strategy`, `describe_choice`) and hands the workers the
name; `benchmarks/scaling.py` tabulates the model. The strategies themselves, as they run,
are `strategy.py`.

Shapes: I items, D hidden width d, B users per rank and step (train.batch_size), W ranks,
G ranks of an item-parallel group, K SVD rank, D_m width of modality m's features.

The scaling model (pure functions of the shapes, documented in docs/design.md §9):
a ring all-reduce of S bytes over W ranks takes 2(W − 1)/W · S / bw + 2(W − 1)·α, a ring
all-gather (reduce-scatter) whose result is S bytes (W − 1)/W · S / bw + (W − 1)·α; a step
takes compute + communication (no overlap credited: DDP overlaps the all-reduce with
backward, so this is an upper bound on step time); users/s = W·B / step; efficiency =
users/s / (W · users/s of one rank without communication).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ld4mrec_dist.config import Config
from ld4mrec_dist.strategy import POWERSGD_MIN_COMPRESSION, POWERSGD_RANK, WIRED, check_available

"""The strategies the trainer can run (item_parallel through train/engine.py's item-parallel engine)."""
MODELLED = ("ddp", "ddp_bf16", "powersgd", "item_parallel")
"""The strategies the scaling model predicts (auto picks among the wired ones)."""
FIDELITY = {"ddp": 0, "item_parallel": 0, "ddp_bf16": 1, "powersgd": 2}
"""0: the gradients of plain DDP (up to float reassociation); 1: rounded to bfloat16;
2: low-rank approximation with error feedback. `auto` prefers lower values."""

AUTO_TOLERANCE = 0.10
"""`auto` keeps the most faithful strategy whose predicted users/s is within this fraction of the best."""

FIRST_BUCKET_BYTES = 1 << 20
"""DDP's first gradient bucket (torch.distributed._DEFAULT_FIRST_BUCKET_BYTES)."""
BUCKET_BYTES = 25 << 20
"""DDP's `bucket_cap_mb` default, 25 MiB."""



# ---------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    """What the scaling model needs to know about one training setup."""

    name: str
    n_items: int
    hidden: int = 256
    batch: int = 256
    svd_rank: int = 64
    feature_dims: tuple[int, ...] = (384, 4096)
    nnz_per_user: float = 10.0
    """Mean train items per user (the sparse encoders' cost; small next to the GEMMs)."""


SHAPES = {  # data_pipeline.synthetic.SHAPES: items, feature widths, mean history length
    "baby": Shape("baby", 7_050, nnz_per_user=160_792 / 19_445),
    "sports": Shape("sports", 18_357, nnz_per_user=296_337 / 35_598),
    "electronics": Shape("electronics", 63_001, nnz_per_user=1_689_188 / 192_403),
    "electronics_x10": Shape("electronics_x10", 630_010, nnz_per_user=1_689_188 / 192_403),
}
"""The shapes the benchmark tabulates; `electronics_x10` is a 10× Electronics catalogue."""


def grad_shapes(n_items: int, hidden: int, svd_rank: int = 64, feature_dims: Sequence[int] = (384, 4096),
                ablation: str = "none") -> list[tuple[int, ...]]:
    """C-Net's parameter shapes in registration order: C-Net itself built on the meta
    device (no memory), so the model can never drift from the module it describes."""
    import torch

    from ld4mrec_dist.cnet import CNet

    with torch.device("meta"):
        cnet = CNet(n_items, hidden, svd_rank, list(feature_dims), ablation=ablation)
    return [tuple(p.shape) for p in cnet.parameters()]


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def is_item_parameter(shape: Sequence[int], n_items: int) -> bool:
    """FC_in's weight [D, I], FC_out's weight [I, D] and bias [I]: what item-parallel shards."""
    return n_items in tuple(shape)


def bucket_count(shapes: Sequence[Sequence[int]], elem_bytes: int = 4, first: int = FIRST_BUCKET_BYTES,
                 cap: int = BUCKET_BYTES) -> int:
    """DDP's buckets for these parameters: filled in reverse registration order, the first
    closing at `first` bytes, the others at `cap` (a tensor larger than the cap closes its
    bucket alone). DDP rebuilds them after step 1 in gradient-ready order, which for C-Net
    is the same reverse order."""
    buckets, size, limit = 0, 0, first
    for shape in reversed(list(shapes)):
        size += _numel(shape) * elem_bytes
        if size >= limit:
            buckets, size, limit = buckets + 1, 0, cap
    return buckets + (size > 0)


def powersgd_elements(shapes: Sequence[Sequence[int]], rank: int = POWERSGD_RANK,
                      min_rate: float = POWERSGD_MIN_COMPRESSION) -> tuple[int, int]:
    """(elements in P and Q of the compressed matrices, elements all-reduced uncompressed),
    as `powerSGD_hook` splits them: a tensor is viewed as [shape[0], rest] and compressed
    iff (n + m)·r·min_rate < n·m, with r = min(n, m, rank)."""
    compressed = uncompressed = 0
    for shape in shapes:
        n = shape[0]
        m = _numel(shape) // n
        r = min(n, m, rank)
        if (n + m) * r * min_rate < n * m:
            compressed += (n + m) * r
        else:
            uncompressed += n * m
    return compressed, uncompressed


# ---------------------------------------------------------------- bytes per step


@dataclass(frozen=True)
class Collective:
    """One kind of collective in a step: `nbytes` is the buffer one rank contributes to an
    all-reduce, or the result one rank receives from an all-gather (all calls together),
    over `group` ranks (None: all W)."""

    name: str
    kind: str  # "all_reduce" | "all_gather" (reduce-scatter costs the same as all-gather)
    nbytes: float
    calls: int
    group: int | None = None


def item_parallel_bytes_per_step(batch: int, hidden: int, grad_clip: bool = False,
                                 l2_input: bool = False, condition_width: int = 0) -> dict[str, int]:
    """Bytes each rank contributes per step to the item group's collectives, by the counting
    convention of `parallel.comm.CollectiveBytes` (the tensor all-reduced, an all-gather's output):
    FC_in's forward and FC_out's backward all-reduce B·D float32 each, the conditions' partial
    sums B·(K + ΣD_m) float32 (`condition_width` = K + ΣD_m, `parallel.conditions`), the loss one of B + 1,
    gradient clipping one float, `model.input_norm=l2` (`l2_input`) the B squared row norms
    (not in the scaling model: B floats). The z_in rows are gathered as in data parallel over
    all W ranks (`dist.zin_bytes_per_step`), the sampler's (t, L_rec) over the W / W_item
    ranks of the data group (`dist.sampler_bytes_per_step`).
    For W_item ≥ 2 (and W_data = 1: a data group adds its all-reduce of the local gradients)."""
    return {"activations": 2 * batch * hidden * 4, "conditions": batch * condition_width * 4,
            "loss": (batch + 1) * 4, "clip": 4 if grad_clip else 0, "input norm": 4 * batch if l2_input else 0}


def collectives(strategy: str, shape: Shape, world: int, item_group: int | None = None,
                rank: int = POWERSGD_RANK) -> list[Collective]:
    """Every collective of one training step of `strategy` on `world` ranks.

    Common to all strategies: z_in rows (W·B·(8 + 4D), `dist.zin_bytes_per_step`) and the
    sampler history (W·B·16, `dist.sampler_bytes_per_step`), one all-gather each of two
    tensors (item_parallel: the history over its W/G data replicas only). `item_parallel` with
    G = `item_group` (default W: one item group) replaces the gradient all-reduce by the
    item group's activations (2·B·D float32, two calls), the conditions' partial sums
    (B·(K + ΣD_m) float32) and loss sums ((B + 1) float32), `item_parallel_bytes_per_step`
    (what parallel/'s tests count);
    with W > G the W/G data replicas all-reduce their gradients (I·D/G of the item layers and
    all of the rest) as DDP does.
    """
    from ld4mrec_dist import dist

    shapes = grad_shapes(shape.n_items, shape.hidden, shape.svd_rank, shape.feature_dims)
    params = sum(_numel(s) for s in shapes)
    buckets = bucket_count(shapes)
    # item_parallel gathers the history over its data group only (W / G ranks): an item group's ranks agree.
    over = world // (item_group or world) if strategy == "item_parallel" else world
    common = [Collective("z_in rows", "all_gather", dist.zin_bytes_per_step(world, shape.batch, shape.hidden), 2),
              Collective("sampler history", "all_gather", dist.sampler_bytes_per_step(over, shape.batch), 2, over)]
    if strategy == "ddp":
        return [Collective("C-Net gradients (fp32)", "all_reduce", 4 * params, buckets), *common]
    if strategy == "ddp_bf16":
        return [Collective("C-Net gradients (bf16)", "all_reduce", 2 * params, buckets), *common]
    if strategy == "powersgd":
        pq, plain = powersgd_elements(shapes, rank)
        return [Collective(f"C-Net gradients (PowerSGD P, Q, rank {rank})", "all_reduce", 4 * pq, 2 * buckets),
                Collective("C-Net gradients (uncompressed tensors)", "all_reduce", 4 * plain, buckets), *common]
    if strategy == "item_parallel":
        g = item_group or world
        item = sum(_numel(s) for s in shapes if is_item_parameter(s, shape.n_items))
        moved = item_parallel_bytes_per_step(shape.batch, shape.hidden,
                                             condition_width=shape.svd_rank + sum(shape.feature_dims))
        out = [Collective("FC_in output + FC_out input gradient [B, D]", "all_reduce", moved["activations"], 2, g),
               Collective("conditions over item slices [B, K + ΣD_m]", "all_reduce", moved["conditions"], 1, g),
               Collective("per-user loss over item slices", "all_reduce", moved["loss"], 1, g), *common]
        if world > g:
            out.append(Collective("C-Net gradients over data replicas", "all_reduce",
                                  4 * (params - item + item / g), buckets, world // g))
        return out
    raise ValueError(f"strategy {strategy!r}: the scaling model knows {MODELLED}")


def bytes_per_step(strategy: str, shape: Shape, world: int, item_group: int | None = None) -> dict[str, float]:
    """{collective name: bytes} of one step (the figures the benchmark measures)."""
    return {c.name: c.nbytes for c in collectives(strategy, shape, world, item_group)}


# ---------------------------------------------------------------- time per step


@dataclass(frozen=True)
class Network:
    """A link between ranks: per-direction bandwidth and per-message latency α."""

    name: str
    gbps: float
    """Bandwidth per direction, Gbit/s."""
    latency_us: float
    source: str = ""

    @property
    def bytes_per_s(self) -> float:
        return self.gbps * 1e9 / 8


NETWORKS = {
    "g5.2xlarge": Network("g5.2xlarge", 10.0, 50.0,
                          "AWS: 'up to 10 Gbps' (burst; 10 Gbps single flow needs a cluster placement group)"),
    "g5.2xlarge-5g": Network("g5.2xlarge-5g", 5.0, 50.0,
                             "AWS: single-flow traffic is limited to 5 Gbps outside a cluster placement group"),
    "g5.12xlarge": Network("g5.12xlarge", 40.0, 50.0, "AWS: 40 Gbps (4× A10G per node, PCIe, no NVLink)"),
    "p4d.24xlarge": Network("p4d.24xlarge", 400.0, 20.0, "AWS: 400 Gbps EFA between nodes (8× A100 per node)"),
    "nvlink-a100": Network("nvlink-a100", 2400.0, 10.0,
                           "NVLink 3: 600 GB/s per GPU, both directions together (300 GB/s = 2,400 Gbps each way)"),
    "nvlink-h100": Network("nvlink-h100", 3600.0, 10.0,
                           "NVLink 4: 900 GB/s per GPU, both directions together (450 GB/s each way)"),
}
"""Documented link figures; latencies are assumptions (TCP in one zone ≈ tens of µs, NCCL
over NVLink ≈ 10 µs per ring step). Everything is a parameter of benchmarks/scaling.py."""


def collective_time(c: Collective, world: int, net: Network) -> float:
    """Seconds of a ring collective: all-reduce 2(W−1)/W · S/bw + 2(W−1)·α per call,
    all-gather / reduce-scatter (W−1)/W · S/bw + (W−1)·α per call; 0 on one rank."""
    n = world if c.group is None else c.group
    if n <= 1 or c.calls == 0:
        return 0.0
    hops = 2 if c.kind == "all_reduce" else 1
    wire = hops * (n - 1) / n * c.nbytes / net.bytes_per_s
    return wire + hops * (n - 1) * c.calls * net.latency_us * 1e-6


def step_flops(shape: Shape) -> tuple[float, float]:
    """(item-proportional FLOPs, item-independent FLOPs) of one training step of B users.

    Item part: the five [B, I]×[I, D]-sized GEMMs (FC_in forward and weight gradient,
    FC_out forward, input and weight gradients) = 10·B·I·D. Item-independent part: the BD
    block (W1 2D×D, W2 K×D, W3 D×D) and the BG MLPs (per modality two heads D_m×D then D×D),
    3× their forward (forward + two backward GEMMs), plus the sparse encoders (c_u = r_u V_K,
    e_{u,m}: 2·nnz·(K + ΣD_m) per user, forward only)."""
    b, i, d, k = shape.batch, shape.n_items, shape.hidden, shape.svd_rank
    item = 10.0 * b * i * d
    mlp = 2 * (2 * d * d + k * d + d * d) + sum(2 * 2 * (dm * d + d * d) for dm in shape.feature_dims)
    sparse = 2 * shape.nnz_per_user * (k + sum(shape.feature_dims))
    return item, b * (3.0 * mlp + sparse)


@dataclass(frozen=True)
class Compute:
    """Seconds per FLOP for the two parts of `step_flops`, plus a fixed cost per step."""

    name: str
    item_s_per_flop: float
    rest_s_per_flop: float
    fixed_s: float = 0.0
    source: str = ""

    def step_s(self, shape: Shape, strategy: str = "ddp", item_group: int = 1) -> float:
        """One rank's step; `item_group` G: item_parallel's rank does I/G of the item part."""
        item, rest = step_flops(shape)
        if strategy == "powersgd":  # P = MQ, Q = MᵀP, M = PQᵀ on the two item matrices
            item += 3 * 2 * 2 * shape.n_items * shape.hidden * POWERSGD_RANK
        if strategy == "item_parallel":
            item /= item_group
        return item * self.item_s_per_flop + rest * self.rest_s_per_flop + self.fixed_s


COMPUTES = {
    "a10g-bf16": Compute("a10g-bf16", 1 / 35e12, 1 / 35e12, 2e-4,
                         "assumed: half of the A10G's ~70 TFLOPS dense bf16 tensor peak, 0.2 ms fixed"),
    # benchmarks/scaling.py's fit (benchmarks/results/scaling-inputs.json): CPU seconds of one
    # thread of `train_step` at Baby, Sports and Electronics on an AMD EPYC (fp32) =
    # 10·B·I·D / 32.3 GFLOP/s + 19 ms of item-independent work at B = d = 256 (the second
    # rate is that 19 ms over `step_flops`' count of it, not a hardware figure).
    "cpu-1thread": Compute("cpu-1thread", 3.10e-11, 4.51e-12, 0.0,
                           "fitted to one thread's train_step CPU time here (benchmarks/scaling.py)"),
}


@dataclass
class Prediction:
    strategy: str
    shape: str
    world: int
    network: str
    compute: str
    compute_s: float
    comm_s: float
    bytes_per_step: dict[str, float] = field(default_factory=dict)
    step_s: float = 0.0
    users_per_s: float = 0.0
    efficiency: float = 0.0
    memory_bytes: float = 0.0


def memory_per_rank(strategy: str, shape: Shape, world: int) -> float:
    """Bytes a rank holds for training: C-Net's parameters, gradients and Adam's two moments
    (16 bytes a parameter; PowerSGD's error-feedback buffer +4), ~8 float32 [B, I]
    activations (input, x_t, noise, mask, x̂, their gradients), and the item buffers
    (features I × ΣD_m and V_K I × K, float32; z_in and the CUDA context are not counted),
    whole on every data-parallel rank. item_parallel (`world` = its group) holds 1/W of the
    item layers, of the [B, I] activations and of the item buffers (`parallel.conditions`)."""
    shapes = grad_shapes(shape.n_items, shape.hidden, shape.svd_rank, shape.feature_dims)
    params = sum(_numel(s) for s in shapes)
    item = sum(_numel(s) for s in shapes if is_item_parameter(s, shape.n_items))
    activations = 8 * 4 * shape.batch * shape.n_items
    buffers = 4 * shape.n_items * (sum(shape.feature_dims) + shape.svd_rank)
    if strategy == "item_parallel":
        return 16 * (params - item + item / world) + (activations + buffers) / world
    return (20 if strategy == "powersgd" else 16) * params + activations + buffers


def users_per_step(strategy: str, shape: Shape, world: int, item_group: int | None = None) -> int:
    """Users trained per step over all ranks: W·B, or B per item group for item_parallel."""
    return shape.batch * (world // (item_group or world) if strategy == "item_parallel" else world)


def predict(strategy: str, shape: Shape, world: int, net: Network, compute: Compute,
            compute_s: float | None = None, item_group: int | None = None) -> Prediction:
    """Predicted step time, users/s and scaling efficiency of `strategy` on `world` ranks.
    `compute_s`: a measured step time of one rank (plain DDP's arithmetic) in place of
    `compute`'s FLOP rates; the strategies' differences (PowerSGD's matmuls, item_parallel's
    1/G of the item part) are still taken from `compute`. Efficiency: users/s over W times
    one rank's users/s without communication."""
    g = item_group or world
    one = compute.step_s(shape)
    base = one if compute_s is None else compute_s
    comp = base * compute.step_s(shape, strategy, g) / one
    colls = collectives(strategy, shape, world, g)
    comm = sum(collective_time(c, world, net) for c in colls) if world > 1 else 0.0
    step = comp + comm
    users = users_per_step(strategy, shape, world, g) / step
    return Prediction(strategy, shape.name, world, net.name, compute.name, comp, comm,
                      {c.name: c.nbytes for c in colls}, step, users, users / (world * shape.batch / base),
                      memory_per_rank(strategy, shape, g if strategy == "item_parallel" else world))


def best_item_group(shape: Shape, world: int, net: Network, compute: Compute,
                    memory_limit: float | None = None) -> int:
    """The item-group size G (a power of two dividing W) with the most users/s for
    item_parallel (G < W: W/G data replicas of an item group), among those that fit."""
    groups = [g for g in (2 ** k for k in range(world.bit_length())) if world % g == 0 and g >= 2] or [world]
    fits = [g for g in groups if memory_limit is None or memory_per_rank("item_parallel", shape, g) <= memory_limit]
    return max(fits or groups, key=lambda g: predict("item_parallel", shape, world, net, compute, item_group=g)
               .users_per_s)


# ---------------------------------------------------------------- auto


def choose_strategy(world: int, shape: Shape, net: Network, compute: Compute,
                    available: Sequence[str] | None = None, memory_limit: float | None = None,
                    tolerance: float = AUTO_TOLERANCE, item_group: int | None = None) -> tuple[str, str]:
    """(strategy, one-line reason): among `available`, the most faithful one (FIDELITY; ddp
    before item_parallel) whose predicted users/s is within `tolerance` of the best that fits `memory_limit`
    bytes per rank (item_parallel with `item_group` ranks per group, None: the best size).
    `available` None: `WIRED`. One rank: `ddp`."""
    if world <= 1:
        return "ddp", "one rank: no gradient crosses ranks"
    available = WIRED if available is None else available
    group = item_group or best_item_group(shape, world, net, compute, memory_limit)
    preds = {s: predict(s, shape, world, net, compute, item_group=group) for s in MODELLED}
    fits = [s for s in available if memory_limit is None or preds[s].memory_bytes <= memory_limit]
    if not fits and memory_limit is not None:
        need = min(preds[s].memory_bytes for s in available)
        return "ddp", (f"no available strategy fits {memory_limit / 2**30:.1f} GiB per rank "
                       f"(needs ≥ {need / 2**30:.1f} GiB); ddp kept")
    best = max(preds[s].users_per_s for s in fits)
    ok = [s for s in fits if preds[s].users_per_s * (1 + tolerance) >= best]
    pick = min(ok, key=lambda s: (FIDELITY[s], s != "ddp", -preds[s].users_per_s))  # plain DDP wins exact ties
    p = preds[pick]
    others = ", ".join(f"{s} {preds[s].users_per_s:,.0f}" for s in MODELLED if s != pick)
    share = p.comm_s / p.step_s
    alone = predict("ddp", shape, 1, net, compute).users_per_s
    return pick, (f"predicted {p.users_per_s:,.0f} users/s ({p.step_s * 1e3:.3g} ms/step, "
                  f"{100 * share:.0f} % communication, efficiency {p.efficiency:.2f}) vs {others} users/s"
                  + (f" (item_parallel with item groups of {group})" if "item_parallel" in available
                     else " (item_parallel: predicted only, not wired)")
                  + (f"; one worker alone is predicted faster ({alone:,.0f} users/s)" if alone > p.users_per_s
                     else ""))


def shape_of(cfg: Config, n_items: int, feature_dims: Sequence[int] = (384, 4096), name: str = "run") -> Shape:
    """The scaling model's Shape of a run (feature widths: the dataset's, when known)."""
    return Shape(name, n_items, cfg.model.hidden, cfg.train.batch_size, cfg.model.svd_rank, tuple(feature_dims))


def default_network(cfg: Config) -> Network:
    """The link `auto` assumes: the cluster file's worker type (g5.2xlarge, 10 Gbps)."""
    return NETWORKS["g5.2xlarge"]


def default_compute(cfg: Config) -> Compute:
    return COMPUTES["a10g-bf16" if cfg.scaling.use_gpu else "cpu-1thread"]


def resolve_strategy(cfg: Config, n_items: int, world: int,
                     feature_dims: Sequence[int] = (384, 4096)) -> tuple[str, str]:
    """(the strategy to run, why): `cfg.scaling.strategy` itself, or `auto`'s choice.
    Deterministic, so every rank resolves the same name. Raises StrategyUnavailable for a
    strategy the trainer cannot run yet."""
    name = cfg.scaling.strategy
    check_available(name)
    if world <= 1:
        return "ddp", "one rank: no gradient crosses ranks"
    if name != "auto":
        return name, "set by scaling.strategy"
    group = getattr(cfg.scaling, "item_group", 0) or world  # item_parallel's group as the trainer would run it
    return choose_strategy(world, shape_of(cfg, n_items, feature_dims), default_network(cfg), default_compute(cfg),
                           item_group=group)


def describe_choice(cfg: Config, n_items: int, world: int, feature_dims: Sequence[int] = (384, 4096)) -> str:
    """The start-up line: which strategy runs, on what assumptions, and why."""
    name, reason = resolve_strategy(cfg, n_items, world, feature_dims)
    asked = cfg.scaling.strategy
    head = f"[ld4mrec] gradient strategy: {name}" + (f" (scaling.strategy={asked})" if asked != name else "")
    if asked == "auto" and world > 1:
        net, comp = default_network(cfg), default_compute(cfg)
        return (f"{head}; W={world}, |I|={n_items:,}, d={cfg.model.hidden}, B={cfg.train.batch_size}, "
                f"assuming {net.name} ({net.gbps:g} Gbps) and {comp.name}: {reason}")
    return f"{head}: {reason}"
