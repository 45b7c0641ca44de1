"""parallel.conditions without a process group: which buffers a rank keeps of its slice."""

from __future__ import annotations

import pytest
import torch

from ld4mrec_dist.config import DiffusionSection, ModelSection
from ld4mrec_dist.model import LD4MRec
from ld4mrec_dist.parallel.conditions import keep_item_slice

U, I = 6, 8


@pytest.mark.parametrize("feature_norm", ["none", "standardize", "l2"])
def test_keep_item_slice_cuts_item_rows_only_even_when_a_feature_is_as_wide_as_the_catalogue(feature_norm):
    g = torch.Generator().manual_seed(0)
    feats = {"text": torch.randn(I, I, generator=g), "image": torch.randn(I, 3, generator=g)}  # text: D_m = I
    model = LD4MRec(ModelSection(hidden=4, svd_rank=2, feature_norm=feature_norm), DiffusionSection(), U, I,
                    item_factors=torch.randn(I, 2, generator=g), item_features=feats,
                    item_degree=torch.arange(I, dtype=torch.float32))
    before = {name: buf.clone() for name, buf in model.named_buffers()}
    keep_item_slice(model, 2, 5)
    after = dict(model.named_buffers())
    item_rows = {"item_factors", "item_degree", "item_feature_0", "item_feature_1"}
    if feature_norm == "l2":
        item_rows |= {"item_feature_0_inv_norm", "item_feature_1_inv_norm"}
    for name, buf in before.items():
        expected = buf[2:5] if name in item_rows else buf
        assert torch.equal(after[name], expected), name
    assert model.item_range == (2, 5)
