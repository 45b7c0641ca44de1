"""A sweep file: the base run, the search space, the metric, ASHA and the trial's workers.

A sweep file (jobs/configs/sweeps/*.yaml) holds:

    name: sr_grid                       # default sweep name (directory under --storage)
    base_config: ""                     # optional training config, as `jobs/train.py --config`
    overrides: {train.epochs: 200}      # section.field: value, for every trial
    grid: {diffusion.sr_prob: [0.001, 0.01], diffusion.sr_gamma: [0.001, 0.01]}
    space: {train.lr: {loguniform: [0.0001, 0.01]}, model.hidden: {choice: [128, 256]}}
    num_samples: 1                      # each grid point (or free sample) this many times
    metric: valid/recall@20             # selection, ASHA and "best": valid metrics only
    asha: {enabled: true, grace_period: 10, reduction_factor: 3, brackets: 1}
    workers_per_trial: 1                # Ray Train workers (DDP ranks) of each trial; 0: in the trial itself
    max_concurrent_trials: 0            # 0: as many as the cluster's resources hold now
    stall_timeout_s: 600                # a wait for resources longer than this is an error

`grid` keys become `tune.grid_search` (every combination is run); `space` keys are
sampled from a Tune distribution. Every key is a dotted `Config` field, and every value
is checked against the typed config when the file is read, so a typo fails at once and
not in the 30th trial.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ld4mrec_dist.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    unknown_key_error,
)

# name -> (tune function, number of arguments); `choice` takes one list.
DISTRIBUTIONS = {"choice": 1, "uniform": 2, "loguniform": 2, "randint": 2, "lograndint": 2,
                 "quniform": 3, "qloguniform": 3, "qrandint": 3}
FORBIDDEN_PREFIXES = ("run.", "scaling.num_workers")
"""Set by the sweep itself: run.* per trial, scaling.num_workers from workers_per_trial."""


@dataclass
class AshaSpec:
    enabled: bool = True
    """Stop weak trials early with ASHA (asynchronous successive halving)."""
    grace_period: int = 10
    """Epochs every trial runs before ASHA may stop it."""
    reduction_factor: float = 3
    """At each rung only the top 1/reduction_factor of trials continue."""
    brackets: int = 1


@dataclass
class SweepSpec:
    name: str
    base_config: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    num_samples: int = 1
    metric: str = "valid/recall@20"
    asha: AshaSpec = field(default_factory=AshaSpec)
    workers_per_trial: int = 1
    max_concurrent_trials: int = 0
    stall_timeout_s: float = 600.0
    """Bound on every wait for resources: a trial whose data read or worker group cannot
    get its CPUs/GPUs, or a sweep in which no trial can start, fails after this long with
    an error naming the missing resource, instead of waiting forever."""

    @property
    def keys(self) -> list[str]:
        """The swept fields, grid first (a 2-key grid is what the heatmap draws)."""
        return [*self.grid, *self.space]


def load_sweep(path: str | Path) -> SweepSpec:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file {p} does not exist (see jobs/configs/sweeps/)")
    from data_pipeline.yaml_file import read_yaml_file  # names the file and line of a YAML syntax error

    try:
        raw = OmegaConf.to_container(read_yaml_file(str(p), ConfigError), resolve=True)  # 1e-3 is a float
    except OmegaConfBaseException as err:
        raise ConfigError(f"sweep file {p}: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"sweep file {p}: write a mapping (name:, grid:, …), not a {type(raw).__name__}")
    return sweep_from_dict({str(k): v for k, v in (raw or {}).items()}, default_name=p.stem, where=str(p))


def sweep_from_dict(raw: dict[str, Any], default_name: str = "sweep", where: str = "sweep") -> SweepSpec:
    known = {f.name for f in dataclasses.fields(SweepSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    raw = copy.deepcopy(raw)
    asha_raw = raw.pop("asha", None) or {}
    bad = sorted(set(asha_raw) - {f.name for f in dataclasses.fields(AshaSpec)})
    if bad:
        raise ConfigError(f"{where}: unknown asha key(s) {bad}")
    spec = SweepSpec(**{"name": default_name, **{k: v for k, v in raw.items() if v is not None}},
                     asha=AshaSpec(**asha_raw))
    check_sweep(spec, where)
    return spec


def sweep_to_dict(spec: SweepSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def check_sweep(spec: SweepSpec, where: str = "sweep") -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {msg}")

    need(bool(spec.grid or spec.space), "nothing to sweep: give `grid` and/or `space`")
    both = sorted(set(spec.grid) & set(spec.space))
    need(not both, f"keys both in grid and space: {both}")
    for key in [*spec.keys, *spec.overrides]:
        need(not key.startswith(FORBIDDEN_PREFIXES),
             f"{key!r} is set by the sweep itself (run.* per trial; use workers_per_trial)")
    for key, values in spec.grid.items():
        need(isinstance(values, list) and len(values) > 0, f"grid.{key}: give a non-empty list of values")
    for key, dist in spec.space.items():
        need(isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in DISTRIBUTIONS,
             f"space.{key}: write one of {sorted(DISTRIBUTIONS)}, e.g. {{loguniform: [0.0001, 0.01]}}")
        kind, args = next(iter(dist.items()))
        n = DISTRIBUTIONS[kind]
        need(isinstance(args, list) and (len(args) > 0 if n == 1 else len(args) == n),
             f"space.{key}.{kind}: needs {'a list of values' if n == 1 else f'{n} numbers'}")
    need(spec.num_samples >= 1, f"num_samples={spec.num_samples}: must be ≥ 1")
    need(spec.workers_per_trial >= 0,
         f"workers_per_trial={spec.workers_per_trial}: must be ≥ 0 (0 trains in the trial's own process)")
    need(spec.max_concurrent_trials >= 0, "max_concurrent_trials: must be ≥ 0 (0 = automatic)")
    need(isinstance(spec.stall_timeout_s, (int, float)) and spec.stall_timeout_s > 0,
         f"stall_timeout_s={spec.stall_timeout_s!r}: give a number of seconds > 0")
    need(spec.metric.startswith("valid/"),
         f"metric={spec.metric!r}: select on a valid metric (e.g. valid/recall@20), never on test")
    need(spec.asha.grace_period >= 1 and spec.asha.reduction_factor > 1,
         "asha: grace_period ≥ 1 and reduction_factor > 1")


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """`cfg` with dotted `section.field: value` overrides, validated by the typed Config."""
    d = config_to_dict(cfg)
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in d or not isinstance(d[section], dict) or name not in d[section]:
            raise unknown_key_error(key)
        d[section][name] = plain(value)
    try:
        return config_from_dict(d)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid value in {overrides}: {err}".split("\n    full_key")[0]) from None


def plain(value: Any) -> Any:
    """numpy scalars (Tune's samplers return them) as Python numbers, for OmegaConf."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict)) else value


def base_config(spec: SweepSpec, cli_overrides: list[str] | None = None) -> Config:
    """The config every trial starts from: file < sweep overrides < command line < workers."""
    fixed = [o for o in cli_overrides or [] if o.startswith(FORBIDDEN_PREFIXES)]
    if fixed:
        raise ConfigError(f"override {fixed[0]!r} is set by the sweep itself (run.* per trial, under "
                          "the sweep directory; use workers_per_trial for scaling.num_workers)")
    cfg = apply_overrides(load_config(spec.base_config or None), spec.overrides)
    cfg = load_config_over(cfg, cli_overrides or [])
    return apply_overrides(cfg, {"scaling.num_workers": spec.workers_per_trial})


def load_config_over(cfg: Config, dotlist: list[str]) -> Config:
    bad = [o for o in dotlist if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r}: write section.field=value, e.g. train.epochs=50")
    parsed: dict[Any, Any] = {}
    if dotlist:
        container = OmegaConf.to_container(OmegaConf.from_dotlist(dotlist))
        parsed = container if isinstance(container, dict) else {}
    flat = {}
    for section, fields in parsed.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"override {section}={fields!r}: write section.field=value")
        flat.update({f"{section}.{name}": value for name, value in fields.items()})
    return apply_overrides(cfg, flat)


def check_space_values(spec: SweepSpec, base: Config) -> None:
    """Every grid value and every distribution's bounds make a valid Config."""
    for key, values in spec.grid.items():
        for v in values:
            apply_overrides(base, {key: v})
    for key, dist in spec.space.items():
        kind, args = next(iter(dist.items()))
        for v in (args if kind == "choice" else args[:2]):
            apply_overrides(base, {key: int(v) if "randint" in kind else v})


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's param space: flat, keyed by the dotted config fields."""
    from ray import tune

    space: dict[str, Any] = {key: tune.grid_search(list(values)) for key, values in spec.grid.items()}
    for key, dist in spec.space.items():
        kind, args = next(iter(dist.items()))
        space[key] = tune.choice(list(args)) if kind == "choice" else getattr(tune, kind)(*args)
    return space
