"""Typed configuration: one home for every default of a training run.

A run's configuration is the `Config` dataclass below. It is built from these defaults,
then a YAML file (`--config`), then `section.field=value` command-line overrides, merged
and type-checked by OmegaConf; each dataclass validates itself in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from data_pipeline import storage

SYNTHETIC_SHAPES = ("tiny", "small", "baby", "sports", "electronics")
SETTINGS = ("clean", "noisy", "as_is")
ABLATIONS = ("none", "no_bg", "no_bd", "no_sr")
INPUT_NORMS = ("none", "l2")
LR_SCALINGS = ("none", "sqrt", "linear")
COLLAB_NORMS = ("none", "history", "unit")
FEATURE_NORMS = ("none", "standardize", "l2")
SVD_SOLVERS = ("fbpca", "distributed")
STRATEGIES = ("ddp", "ddp_bf16", "powersgd", "item_parallel", "auto")
"""Every value `scaling.strategy` accepts (what each does: ld4mrec_dist/strategy.py)."""
RANKING_METRICS = ("recall", "ndcg")
"""The ranking metrics of every evaluation, each at every cut-off of `eval.ks`, named
`metric@k` (computed by eval/metrics.py; read by the selection, the reports and compare)."""


def metric_name(metric: str, k: int) -> str:
    """The name of a ranking metric at cut-off k, as metrics.jsonl and the reports write it."""
    return f"{metric}@{k}"


def metric_names(ks: Sequence[int], by_cutoff: bool = False) -> list[str]:
    """`metric@k` of every ranking metric at every cut-off: metric by metric (the order in
    which the evaluator's sums travel through an all-reduce), or cut-off by cut-off (the
    columns of printed tables)."""
    if by_cutoff:
        return [metric_name(m, k) for k in ks for m in RANKING_METRICS]
    return [metric_name(m, k) for m in RANKING_METRICS for k in ks]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


SEED_LIMIT = 2**32  # numpy's legacy seeding takes 0 ≤ seed < 2**32


def _check_seed(name: str, seed: int) -> None:
    _check(0 <= seed < SEED_LIMIT, f"{name}={seed}: must be in [0, 2**32)")


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot name a run directory inside run.storage (None when it can): a name
    is one path component, so the run can never land outside run.storage."""
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return ("a run name is one folder name inside run.storage: no '/' or '\\', not '.' or '..', "
                "not an absolute path; e.g. run.name=ml1m-lr3e-4")
    return None


@dataclass
class DataSection:
    path: str = ""
    """A prepared dataset directory (see `jobs/prepare.py`). Empty: use `synthetic`."""
    synthetic: str = "small"
    """Built-in synthetic shape prepared on first use when `path` is empty: one of
    tiny, small, baby, sports, electronics."""
    setting: str = "clean"
    """Protocol for the synthetic source: clean, noisy or as_is (docs/design.md §4)."""
    root: str = "data"
    """Where built-in synthetic datasets are prepared (relative paths resolve against
    the current directory of the driver)."""
    seed: int = 2024
    """Seed of the synthetic generator and of the protocol's noise."""

    def __post_init__(self) -> None:
        _check(self.synthetic in SYNTHETIC_SHAPES,
               f"data.synthetic={self.synthetic!r}: choose one of {SYNTHETIC_SHAPES}")
        _check(self.setting in SETTINGS,
               f"data.setting={self.setting!r}: choose one of {SETTINGS}")
        _check_seed("data.seed", self.seed)


@dataclass
class DiffusionSection:
    steps: int = 5
    """T, the number of diffusion steps (the paper gives none; T = 1 works)."""
    noise_scale: float = 0.01
    """s in Eq. 3 (paper optimum, §4.4.2)."""
    alpha_min: float = 0.05
    """α_min in Eq. 3 (paper optimum, §4.4.2)."""
    sr_prob: float = 0.01
    """p of soft reconstruction (Eq. 12): chance that an entry is smoothed."""
    sr_gamma: float = 0.01
    """γ of soft reconstruction: clicked entries become 1 − γ, non-clicked γ."""
    importance_sampling: bool = True
    """Sample t ∝ √E[L²] (Eq. 13) once every step has `history` losses; else uniform."""
    history: int = 10
    """H, losses kept per step for importance sampling."""
    uniform_floor: float = 1e-3
    """Share of uniform probability mixed into p_t so that no step starves."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, f"diffusion.steps={self.steps}: must be ≥ 1")
        _check(0 < self.noise_scale < 1, f"diffusion.noise_scale={self.noise_scale}: must be in (0, 1)")
        _check(0 < self.alpha_min <= 1, f"diffusion.alpha_min={self.alpha_min}: must be in (0, 1]")
        _check(0 <= self.sr_prob <= 1, f"diffusion.sr_prob={self.sr_prob}: must be in [0, 1]")
        _check(0 <= self.sr_gamma < 0.5, f"diffusion.sr_gamma={self.sr_gamma}: must be in [0, 0.5)")
        _check(self.history >= 1, f"diffusion.history={self.history}: must be ≥ 1")
        _check(0 <= self.uniform_floor < 1, f"diffusion.uniform_floor={self.uniform_floor}: must be in [0, 1)")


@dataclass
class ModelSection:
    hidden: int = 256
    """d, the hidden width of C-Net (even: the sinusoidal time code needs pairs)."""
    svd_rank: int = 64
    """d_svd, rank of the randomized SVD collaborative encoder."""
    svd_solver: str = "fbpca"
    """Who fits V_k, the randomized SVD of the train matrix: fbpca (the driver, once, over
    the whole train matrix: `encoders.svd_item_factors`); distributed (the ranks, from the
    rows each already reads, on the run's data × item grid, never gathering the matrix:
    `svd_dist.distributed_item_factors`; each item-parallel rank keeps only its slice).
    distributed draws another random sketch than fbpca, so V_k and the metrics differ
    (its captured energy within 0.5 % of fbpca's: docs/scaling.md). Either way V_k is kept
    as the run directory's item_factors.npy (rank 0 writes the distributed one, gathered,
    after the fit), which resumes and restarts read back instead of fitting again."""
    modalities: list[str] | None = None
    """Modalities used by the BG-Block, in order. None: text then image, then any other
    modality of the dataset in its manifest order. [] uses none."""
    per_user_time: bool = True
    """z_in: one learnable vector per user (paper's t_in,u); False shares one vector."""
    ablation: str = "none"
    """none, no_bg (second BD-Block instead of BG), no_bd (DiffRec-like MLP), no_sr."""
    dropout: float = 0.0
    """Dropout on the input x_t (DiffRec uses 0.5 on its input; the paper gives none)."""
    input_norm: str = "none"
    """Scaling of x_t before FC_in: none (raw), or l2 (each row divided by its L2 norm,
    DiffRec's `F.normalize`; keeps FC_in's pre-activation scale independent of the
    user's history length)."""
    collab_norm: str = "none"
    """Scaling of c_u = r_u V_k, which grows with the user's history length: none;
    history (c_u / ‖r_u‖₂, i.e. / √|N_u| for 0/1 rows); unit (c_u / ‖c_u‖₂)."""
    feature_norm: str = "none"
    """Scaling of the raw item features before Eq. 14 aggregates them: none;
    standardize (each column to mean 0, std 1 over items); l2 (each item row to unit norm)."""
    negative_slope: float = 0.2
    """LeakyReLU slope inside each BG MLP (γ_m and β_m heads, Linear → LeakyReLU → Linear)."""
    stage_slope: float = 0.2
    """LeakyReLU slope between consecutive BG stages (Eq. 22's text → image step); 1.0 makes
    it the identity."""
    fused_forward: bool = True
    """The training forward in few passes over [B, I] (each costs as much as one of the step's
    GEMMs; measured in benchmarks/roofline.py): the soft-reconstruction
    mask drawn at its ≈ p·B·I chosen entries (geometric gaps, not one uniform per entry),
    f_s(x_in) kept sparse (never densified), x_t built inside the noise tensor, x̂ − f_s
    inside x̂, the loss's squared error and its gradient one pass each. Same math (tests),
    another random stream for the mask (hence for ε after it). false: the
    straightforward one-tensor-per-operation form, kept as the reference the fused one is
    tested against and to reproduce runs made with it."""

    def __post_init__(self) -> None:
        _check(self.hidden >= 2 and self.hidden % 2 == 0, f"model.hidden={self.hidden}: must be an even number ≥ 2")
        _check(self.svd_rank >= 1, f"model.svd_rank={self.svd_rank}: must be ≥ 1")
        _check(self.svd_solver in SVD_SOLVERS,
               f"model.svd_solver={self.svd_solver!r}: choose one of {SVD_SOLVERS}")
        _check(self.ablation in ABLATIONS, f"model.ablation={self.ablation!r}: choose one of {ABLATIONS}")
        _check(0 <= self.dropout < 1, f"model.dropout={self.dropout}: must be in [0, 1)")
        _check(self.input_norm in INPUT_NORMS, f"model.input_norm={self.input_norm!r}: choose one of {INPUT_NORMS}")
        _check(self.collab_norm in COLLAB_NORMS,
               f"model.collab_norm={self.collab_norm!r}: choose one of {COLLAB_NORMS}")
        _check(self.feature_norm in FEATURE_NORMS,
               f"model.feature_norm={self.feature_norm!r}: choose one of {FEATURE_NORMS}")
        _check(math.isfinite(self.negative_slope),
               f"model.negative_slope={self.negative_slope}: must be a finite number")
        _check(math.isfinite(self.stage_slope), f"model.stage_slope={self.stage_slope}: must be a finite number")


@dataclass
class TrainSection:
    epochs: int = 1000
    """Most epochs; early stopping usually ends the run first."""
    batch_size: int = 256
    """Users per minibatch per worker."""
    lr: float = 1e-3
    """Adam's learning rate at `lr_reference_batch` users per step (all data-parallel ranks
    together); `lr_scaling` says how it follows a larger or smaller global batch."""
    lr_scaling: str = "none"
    """How the learning rate follows the global batch G = batch_size × data-parallel ranks:
    `none` (lr whatever G), `sqrt` (lr·√(G / lr_reference_batch), the rule that keeps
    Adam's update noise constant), `linear` (lr·G / lr_reference_batch, SGD's rule).
    The rule is a pure function of (G, step), so a resume replays it exactly. `none`
    because, measured, valid Recall@20 holds up to G = 4,096 with the learning rate
    unchanged and both rules lose a little (docs/scaling-out.md, "Bigger per-rank batches")."""
    lr_reference_batch: int = 256
    """The global batch at which `lr` is used as given."""
    lr_warmup_steps: int = 0
    """Ramp the (scaled) learning rate linearly over the first N = lr_warmup_steps steps
    (step s uses (s+1)/N of it), as large-batch SGD does with the linear rule; 0: no ramp."""
    weight_decay: float = 1e-5
    """Adam's L2 penalty on the dense parameters (not z_in). 1e-5, not 0 or 1e-4: the best
    valid Recall@20 of the three on MovieLens-1M (clean and noisy) and on the synthetic
    data (docs/results.md)."""
    seed: int = 2024
    """Seed of model initialisation, minibatch order and diffusion noise."""
    eval_every: int = 1
    """Evaluate (and checkpoint) every this many epochs."""
    patience: int = 10
    """Stop after this many evaluations without a better valid Recall@20. 10, not the paper's
    20: it keeps the same best epoch in every measured run and saves ~10 epochs per run
    (the measurement: docs/design.md, "Selection and early stopping")."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value; 0 disables."""
    fail_at_step: int = -1
    """Fault injection for tests: worker rank 1 (or 0 alone) dies once at this global step."""
    fused_adam: bool = True
    """C-Net's Adam runs PyTorch's fused kernel (`Adam(fused=True)`: one pass per parameter,
    CPU and CUDA); the same update as the default implementation to float rounding (tested).
    false: PyTorch's default Adam (on CPU, a loop of ~10 element-wise passes per parameter)."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"train.epochs={self.epochs}: must be ≥ 1")
        _check(self.batch_size >= 1, f"train.batch_size={self.batch_size}: must be ≥ 1")
        _check(self.lr > 0 and math.isfinite(self.lr), f"train.lr={self.lr}: must be a finite number > 0")
        _check(self.lr_scaling in LR_SCALINGS,
               f"train.lr_scaling={self.lr_scaling!r}: choose one of {LR_SCALINGS}")
        _check(self.lr_reference_batch >= 1, f"train.lr_reference_batch={self.lr_reference_batch}: must be ≥ 1")
        _check(self.lr_warmup_steps >= 0, f"train.lr_warmup_steps={self.lr_warmup_steps}: must be ≥ 0")
        _check(self.eval_every >= 1, f"train.eval_every={self.eval_every}: must be ≥ 1")
        _check(self.patience >= 1, f"train.patience={self.patience}: must be ≥ 1")
        _check(self.weight_decay >= 0 and math.isfinite(self.weight_decay),
               f"train.weight_decay={self.weight_decay}: must be a finite number ≥ 0 (0: no decay)")
        _check(self.grad_clip >= 0 and math.isfinite(self.grad_clip),
               f"train.grad_clip={self.grad_clip}: must be a finite number ≥ 0 (0: no clipping)")
        _check_seed("train.seed", self.seed)
        _check(self.fail_at_step >= -1, f"train.fail_at_step={self.fail_at_step}: must be ≥ -1 (-1: no fault)")


@dataclass
class EvalSection:
    ks: list[int] = field(default_factory=lambda: [10, 20])
    """Cut-offs K for Recall@K and NDCG@K."""
    select_metric: str = "recall@20"
    """Valid metric that drives early stopping and the best checkpoint."""
    mask_valid_at_test: bool = False
    """Also mask valid items when ranking for test (DiffRec's convention)."""
    batch_size: int = 1024
    """Users scored at once per worker."""
    test_every_eval: bool = False
    """Score test at every evaluation. By default test is scored only when valid improves:
    only the best valid epoch's test is reported, and it halves the evaluation time."""

    def __post_init__(self) -> None:
        _check(len(self.ks) > 0 and all(k >= 1 for k in self.ks), f"eval.ks={self.ks}: need positive cut-offs")
        name, _, k = self.select_metric.partition("@")
        _check(name in RANKING_METRICS and k.isdigit() and int(k) in self.ks,
               f"eval.select_metric={self.select_metric!r}: use recall@K or ndcg@K with K in eval.ks")
        _check(self.batch_size >= 1, f"eval.batch_size={self.batch_size}: must be ≥ 1")


@dataclass
class ScalingSection:
    num_workers: int = 2
    """Ray Train workers (DDP ranks). 0 runs the loop in the driver without Ray workers."""
    use_gpu: bool = False
    """One GPU per worker (CUDA; NCCL between ranks); with num_workers=0, this process's GPU."""
    cpus_per_worker: float = 0.5
    """CPUs Ray reserves per worker. Fractional by default so that 2 workers leave room on a
    2-core host for the driver and, in sweeps, for more trials; raise it on real nodes."""
    bf16: bool = True
    """bf16 autocast for C-Net on CUDA; ignored on CPU."""
    max_failures: int = 2
    """Worker-group restarts from the latest checkpoint before the run fails (≥ 0; Ray's -1,
    "retry for ever", is refused: a run that keeps failing must end)."""
    wait_for_resources_s: float = 0.0
    """0: the cluster must hold the workers' CPUs/GPUs when the run starts (checked before
    any worker starts). > 0: an autoscaling cluster may still add them; the worker group
    waits up to this long for them (per start attempt) before the run fails."""
    lost_node_wait_s: float = 20.0
    """With wait_for_resources_s = 0: when a restart after a failure finds that a node was
    lost and the live nodes cannot hold the workers, how long it waits for a node to come
    back (restarted or replaced) before the run ends with the `--resume` command, instead
    of spending Ray Train's worker-group start-up timeout on every remaining attempt."""
    strategy: str = "ddp"
    """How C-Net's gradients cross ranks: ddp, ddp_bf16, powersgd, item_parallel or auto.
    They live in ld4mrec_dist/strategy.py, and `auto` chooses in ld4mrec_dist/scaling_model.py
    (docs/design.md §9):
    ddp (float32 all-reduce, exact); ddp_bf16 (bfloat16 all-reduce, half the bytes);
    powersgd (rank-4 PowerSGD with error feedback, ~64× fewer bytes for the item layers);
    item_parallel (C-Net's two |I|-sized layers sharded over item groups of
    `item_group` ranks: activations cross ranks, not |I|·d gradients, and each rank holds
    1/W_item of those layers; docs/design.md §6.1; each rank builds only its shard, drawn
    with the full layers' Xavier law from per-block seeded streams, hence other initial
    numbers than the model built whole, and holds only its items' rows of V_k, of the
    features and of the degrees: ld4mrec_dist/parallel/build.py); auto (picked by the scaling model from
    W and the catalogue size, printed at start-up). No effect with one worker.
    Precision: the ddp_bf16 and powersgd hooks are lossy; see docs/scaling-out.md for the measured cost."""
    item_group: int = 0
    """Ranks per item group with strategy=item_parallel (0: all workers); must divide
    num_workers. The W / item_group groups split the users between them (data parallel)."""

    def __post_init__(self) -> None:
        _check(self.num_workers >= 0, f"scaling.num_workers={self.num_workers}: must be ≥ 0")
        _check(self.cpus_per_worker > 0 and math.isfinite(self.cpus_per_worker),
               f"scaling.cpus_per_worker={self.cpus_per_worker}: must be a finite number > 0")
        _check(self.max_failures >= 0,
               f"scaling.max_failures={self.max_failures}: must be ≥ 0 (restarts before the run fails; there is "
               "no unbounded setting, every start is bounded)")
        _check(self.wait_for_resources_s >= 0 and math.isfinite(self.wait_for_resources_s),
               f"scaling.wait_for_resources_s={self.wait_for_resources_s}: must be a finite number ≥ 0 "
               "(a start never waits for ever)")
        _check(self.lost_node_wait_s >= 0 and math.isfinite(self.lost_node_wait_s),
               f"scaling.lost_node_wait_s={self.lost_node_wait_s}: must be a finite number ≥ 0")
        _check(self.strategy in STRATEGIES,
               f"scaling.strategy={self.strategy!r}: choose one of {STRATEGIES}")
        _check(self.item_group >= 0, f"scaling.item_group={self.item_group}: must be ≥ 0 (0: all workers)")
        _check(self.item_group <= 1 or self.num_workers % self.item_group == 0,
               f"scaling.item_group={self.item_group} must divide scaling.num_workers={self.num_workers}")


@dataclass
class RunSection:
    name: str = ""
    """Run name; empty: <dataset>-<ablation>-<timestamp>."""
    storage: str = "runs"
    """Parent of run directories (local path, s3:// or gs://)."""
    resume: str = ""
    """A run directory to resume from its latest checkpoint."""
    from_checkpoint: str = ""
    """With `resume`: the checkpoint directory name to resume from (default: the newest intact one)."""

    def __post_init__(self) -> None:
        problem = run_name_problem(self.name)
        _check(problem is None, f"run.name={self.name!r}: {problem}")


@dataclass
class Config:
    data: DataSection = field(default_factory=DataSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)


def config_key_names() -> list[str]:
    """Every key as an override writes it (`section.field`), in declaration order."""
    return [f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
            for f in dataclasses.fields(section.default_factory)]  # type: ignore[arg-type]


def unknown_key_error(key: str, where: str = "") -> ConfigError:
    """The one-line error for a key `Config` does not have, naming the nearest one."""
    keys = config_key_names()
    candidates = keys if "." in key else list(dict.fromkeys(k.partition(".")[0] for k in keys))
    nearest = difflib.get_close_matches(key, candidates, n=1)
    hint = f"; did you mean {nearest[0]}?" if nearest else ""
    return ConfigError(f"unknown configuration key {key!r}{where}{hint} "
                       "(python jobs/train.py --help lists every key)")


def load_config(path: str | Path | Config | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path` (local or URI), then `section.field=value` overrides.
    `path` may also be a `Config`, which then replaces the defaults (it is not modified)."""
    base = path if isinstance(path, Config) else None
    source = None if isinstance(path, Config) else path
    layers = [OmegaConf.structured(base if base is not None else Config)]
    try:
        if source:
            if not storage.is_file(source):
                raise ConfigError(f"config file {source} does not exist")
            from data_pipeline.yaml_file import load_yaml  # names the file and line of a YAML syntax error

            layers.append(load_yaml(storage.read_bytes(source), str(source), ConfigError))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"override {bad[0]!r}: write section.field=value, e.g. train.lr=0.001")
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        where = f" in {source}" if source else ""
        if isinstance(err, ConfigKeyError) and err.full_key:
            typed = [o.partition("=")[0] for o in overrides or []]
            key = next((k for k in typed if k == err.full_key or k.startswith(f"{err.full_key}.")), None)
            raise unknown_key_error(key or err.full_key, "" if key else where) from None
        key = f"{err.full_key}: " if getattr(err, "full_key", None) else ""  # the field, as the user writes it
        raise ConfigError(f"invalid configuration{where}: {key}{err}".split("\n    full_key")[0]) from None
    assert isinstance(cfg, Config)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> Config:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), d))  # type: ignore[return-value]


def config_to_yaml(cfg: Config) -> str:
    """YAML that `load_config` (and `jobs/train.py --config`) read back unchanged."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(config_to_yaml(cfg))
