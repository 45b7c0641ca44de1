"""Item-parallel LD4MRec (docs/design.md §6.1): C-Net's FC_in and FC_out sharded
over the items of a ("data", "item") device mesh with torch's tensor-parallel API, the
forward process drawn per item slice, the loss summed over slices, top-k merged across
slices, and checkpoints that load into any layout.

Modules: `item` (mesh, sharding, the step), `topk` (ranking over slices), `checkpoint`
(DCP save/load across layouts; the single-process checkpoint form gathered and resharded),
`comm` (counting the bytes of collectives).
"""

from ld4mrec_dist.parallel.checkpoint import load_plain_state, load_sharded, plain_state, save_sharded
from ld4mrec_dist.parallel.item import (
    ItemLayout,
    ItemParallelStep,
    SliceDraw,
    draw_slice,
    item_mesh,
    item_parallel_step,
    item_param_groups,
    item_slice,
    shard_items,
    slice_generators,
    slice_loss,
)
from ld4mrec_dist.parallel.topk import item_parallel_ranking, item_parallel_topk, merge_topk, topk_ordered
from ld4mrec_dist.scaling_model import item_parallel_bytes_per_step  # the formula lives with the scaling model

__all__ = [
    "ItemLayout", "ItemParallelStep", "SliceDraw", "draw_slice", "item_mesh", "item_parallel_bytes_per_step",
    "item_parallel_ranking", "item_parallel_step", "item_parallel_topk", "item_param_groups", "item_slice",
    "load_plain_state", "load_sharded", "merge_topk", "plain_state", "save_sharded", "shard_items",
    "slice_generators", "slice_loss", "topk_ordered",
]
