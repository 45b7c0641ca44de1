"""Reference recommenders evaluated with the same all-ranking protocol as LD4MRec.

`most_popular` is the project's own popularity ranking (no extra needed). The other
baselines are library implementations, never re-written here: cornac (EASE, BPR, VBPR,
MostPop) and implicit (ALS). Each adapter turns our train split (users
0..U-1, items 0..I-1) into the library's train data with the *identity* id map, so the
library's user and item indices are ours; fits; and returns a `ScoreFn` that asks the
library for every item's score of each user, [B, I] in our item index. The evaluator then
masks and ranks exactly as it does for LD4MRec.

Both libraries are the optional extra `pip install -e ".[baselines]"`, imported lazily.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from data_pipeline.dataset import PreparedDataset
from ld4mrec_dist.eval.evaluator import ScoreFn

EXTRA = 'pip install -e ".[baselines]"'
Params = dict[str, Any]  # one hyperparameter setting, passed to the library as keyword arguments


class BaselineError(RuntimeError):
    """A baseline cannot run: unknown name, missing library, missing item features."""


def most_popular(item_degree_I: np.ndarray) -> ScoreFn:
    """Every user gets the items ranked by train popularity (ties by item index)."""
    popularity_I = torch.as_tensor(np.asarray(item_degree_I, dtype=np.float32))

    def score(rows_BI: torch.Tensor, users_B: torch.Tensor) -> torch.Tensor:
        return popularity_I.to(users_B.device).expand(users_B.shape[0], -1)

    return score


@dataclass(frozen=True)
class TrainData:
    """What a baseline is fitted on: the train split and, for VBPR, the item features."""

    train_UI: sp.csr_matrix  # binary float32 [U, I]
    features_IF: np.ndarray | None = None  # float32 [I, F]: every modality side by side

    @property
    def n_users(self) -> int:
        return self.train_UI.shape[0]

    @property
    def n_items(self) -> int:
        return self.train_UI.shape[1]


# fit(train data, hyperparameters, seed or None) -> scores of the fitted model
FitFn = Callable[[TrainData, Params, int | None], ScoreFn]


def train_data_of(ds: PreparedDataset, train_UI: sp.csr_matrix) -> TrainData:
    """The train split plus the dataset's modalities concatenated (VBPR reads one matrix;
    the MMRec VBPR concatenates text and image the same way)."""
    feats = [np.asarray(ds.feature(m), dtype=np.float32) for m in ds.modalities]
    return TrainData(train_UI.astype(np.float32).tocsr(), np.concatenate(feats, axis=1) if feats else None)


def library(name: str, baseline: str = "") -> Any:
    """The library module; a one-line BaselineError naming the extra when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        who = f"baseline {baseline!r} needs" if baseline else "baselines need"
        raise BaselineError(f"{who} the {name} library ({err.name} is not installed): {EXTRA}") from None


# ---------------------------------------------------------------------------- cornac


def cornac_dataset(data: TrainData, seed: int | None) -> Any:
    """cornac Dataset of the train split with identity id maps: cornac's user u and item i
    are ours, including items without a train interaction (num_items = I)."""
    from cornac.data import Dataset

    coo = data.train_UI.tocoo()
    return Dataset(num_users=data.n_users, num_items=data.n_items,
                   uid_map=OrderedDict((u, u) for u in range(data.n_users)),
                   iid_map=OrderedDict((i, i) for i in range(data.n_items)),
                   uir_tuple=(coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.float64)),
                   seed=seed)


def cornac_batch_scores(model: Any, users_B: np.ndarray) -> np.ndarray:
    """[B, I] scores of a fitted cornac model, the same numbers as `model.score(u)` per user
    (tests check it), computed for the whole batch at once where the model allows."""
    name = type(model).__name__
    if name == "EASE":  # score(u) = U[u] · B (its ANN vectors would give U · Bᵀ, not the same)
        return np.asarray(model.U[users_B] @ model.B)
    if name in ("BPR", "VBPR"):  # score(u) = biases + factors: the documented dot-product vectors
        return model.get_user_vectors()[users_B] @ model.get_item_vectors().T
    return np.stack([np.asarray(model.score(int(u))).reshape(-1) for u in users_B])


def cornac_scores(model: Any, n_items: int) -> ScoreFn:
    """ScoreFn of a fitted cornac model: every item's score for each user of the batch."""

    def score(rows_BI: torch.Tensor, users_B: torch.Tensor) -> torch.Tensor:
        scores_BI = np.asarray(cornac_batch_scores(model, users_B.cpu().numpy()), dtype=np.float32)
        if scores_BI.shape != (users_B.shape[0], n_items):
            expected = (users_B.shape[0], n_items)
            raise BaselineError(f"{type(model).__name__} scored {scores_BI.shape}, expected {expected}")
        return torch.from_numpy(scores_BI).to(users_B.device)

    return score


def fit_cornac(model_name: str, data: TrainData, params: Params, seed: int | None,
               modality: bool = False) -> ScoreFn:
    cornac = library("cornac", model_name)
    train_set = cornac_dataset(data, seed)
    if modality:
        if data.features_IF is None:
            raise BaselineError(f"{model_name}: the dataset has no item features (modalities); "
                                "prepare it with --feature, or leave this baseline out")
        from cornac.data import ImageModality

        # No ids: the feature rows are already in our (= cornac's) item order.
        train_set.add_modalities(item_image=ImageModality(features=data.features_IF).build())
    cls = getattr(cornac.models, model_name)
    accepted = inspect.signature(cls.__init__).parameters
    # Quiet, and seeded where the model takes a seed (MostPop takes neither).
    extra = {k: v for k, v in (("verbose", False), ("seed", seed)) if k in accepted and v is not None}
    model = cls(**params, **extra)
    with contextlib.redirect_stdout(io.StringIO()):  # VBPR prints "Optimization finished!" even when quiet
        model.fit(train_set)
    return cornac_scores(model, data.n_items)


# -------------------------------------------------------------------------- implicit


def fit_implicit_als(data: TrainData, params: Params, seed: int | None) -> ScoreFn:
    """implicit's ALS on the CPU; a user's score of an item is the factors' dot product,
    which is what `model.recommend` ranks by."""
    library("implicit", "als")
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(1, "blas"):  # implicit's advice: a BLAS thread pool slows its solver
        model = AlternatingLeastSquares(**params, random_state=seed, num_threads=1)
        model.fit(data.train_UI, show_progress=False)
    user_UF = np.asarray(model.user_factors)
    item_IF = torch.from_numpy(np.asarray(model.item_factors))

    def score(rows_BI: torch.Tensor, users_B: torch.Tensor) -> torch.Tensor:
        return (torch.from_numpy(user_UF[users_B.cpu().numpy()]) @ item_IF.T).to(users_B.device)

    return score


# -------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Baseline:
    """One library baseline: how to fit it, and the grid selected on valid."""

    name: str  # the --baselines name
    label: str  # the table's model column
    library: str
    fit: FitFn
    grid: dict[str, list[Any]] = field(default_factory=dict)  # every combination is tried
    fixed: dict[str, Any] = field(default_factory=dict)  # passed to every fit
    quick_grid: dict[str, list[Any]] | None = None  # --quick: a smaller grid (None: the full one)
    stochastic: bool = True  # False: one run, seeds do not change it
    note: str = ""

    def points(self, quick: bool = False) -> list[Params]:
        """Every hyperparameter combination to try, each merged with `fixed`."""
        grid = self.quick_grid if quick and self.quick_grid is not None else self.grid
        keys = list(grid)
        combos = itertools.product(*(grid[k] for k in keys))
        return [{**self.fixed, **dict(zip(keys, values, strict=True))} for values in combos]


def _cornac(model_name: str, modality: bool = False) -> FitFn:
    return lambda data, params, seed: fit_cornac(model_name, data, params, seed, modality)


BASELINES: dict[str, Baseline] = {b.name: b for b in [
    Baseline("mostpop", "MostPop (cornac)", "cornac", _cornac("MostPop"), stochastic=False,
             note="train popularity"),
    Baseline("ease", "EASE (cornac)", "cornac", _cornac("EASE"),
             grid={"lamb": [100, 250, 500, 1000, 2000, 5000]},
             # posB=False is Steck's closed form (cornac's default clips negative weights).
             fixed={"posB": False}, quick_grid={"lamb": [250, 500, 1000]}, stochastic=False,
             note="closed form, deterministic: one run"),
    Baseline("bpr", "BPR-MF (cornac)", "cornac", _cornac("BPR"),
             # One thread when seeded (cornac's rule): ~1-2 min a fit on ML-1M, hence 4 points.
             grid={"learning_rate": [0.01, 0.05], "lambda_reg": [0.001, 0.01]},
             fixed={"k": 64, "max_iter": 100}, quick_grid={"learning_rate": [0.05], "lambda_reg": [0.001, 0.01]}),
    Baseline("vbpr", "VBPR (cornac)", "cornac", _cornac("VBPR", modality=True),
             grid={"learning_rate": [0.001, 0.005], "lambda_w": [0.001, 0.01]},
             fixed={"k": 32, "k2": 32, "n_epochs": 20, "batch_size": 1024, "lambda_b": 0.01},
             quick_grid={"learning_rate": [0.005], "lambda_w": [0.001]},
             # cornac draws VBPR's negatives one by one in Python: one ML-1M epoch took 476 s on a
             # loaded 2-core host (load ~18), so 20 epochs is an hours-long run there.
             note="item features: all modalities concatenated"),
    Baseline("als", "ALS (implicit)", "implicit", fit_implicit_als,
             grid={"factors": [64, 128], "regularization": [0.01, 0.1], "alpha": [1.0, 10.0]},
             fixed={"iterations": 15}, quick_grid={"factors": [64], "regularization": [0.1], "alpha": [1.0, 10.0]}),
]}

# Not offered: cornac's LightGCN and NGCF need DGL (torch 2.0 / dgl 1.1 pins), which does not
# install beside this project's torch; cornac's WMF needs TensorFlow; cornac's ItemKNN predicts
# a weighted mean rating, constant on binary data.
UNAVAILABLE = {"lightgcn": "cornac's LightGCN needs DGL, which does not install beside torch 2.13",
               "ngcf": "cornac's NGCF needs DGL, which does not install beside torch 2.13",
               "wmf": "cornac's WMF needs TensorFlow; use `als` (implicit) instead",
               "itemknn": "cornac's ItemKNN averages ratings, which are all 1 on implicit data; use `ease`"}


def baseline(name: str) -> Baseline:
    if name in UNAVAILABLE:
        raise BaselineError(f"baseline {name!r} is not offered: {UNAVAILABLE[name]}")
    if name not in BASELINES:
        raise BaselineError(f"unknown baseline {name!r}: choose from {sorted(BASELINES)}")
    return BASELINES[name]


def check_available(names: list[str]) -> None:
    """Fail before any training when a named baseline or its library is missing."""
    for name in names:
        library(baseline(name).library, name)
