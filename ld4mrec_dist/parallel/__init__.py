"""Item-parallel LD4MRec (issue 12 §2, docs/design.md §6.1): C-Net's FC_in and FC_out sharded
over the items of a ("data", "item") device mesh with torch's tensor-parallel API, the
forward process drawn per item slice, the loss summed over slices, top-k merged across
slices, and DCP checkpoints that load into any layout.

Modules: `item` (mesh, sharding, the step), `topk` (ranking over slices), `checkpoint`
(save/load across layouts), `comm` (counting the bytes of collectives).
"""

from ld4mrec_dist.parallel.item import (
    ItemLayout,
    SliceDraw,
    draw_slice,
    item_mesh,
    item_parallel_bytes_per_step,
    item_parallel_step,
    item_slice,
    shard_items,
    slice_generators,
    slice_loss,
)
from ld4mrec_dist.parallel.topk import item_parallel_topk, merge_topk, topk_ordered

__all__ = [
    "ItemLayout", "SliceDraw", "draw_slice", "item_mesh", "item_parallel_bytes_per_step", "item_parallel_step",
    "item_slice", "item_parallel_topk", "merge_topk", "shard_items", "slice_generators", "slice_loss",
    "topk_ordered",
]
