"""FSDP for ``train.fsdp``: accelerate's fully sharded data parallel, one shard unit per transformer block.

DDP, where every process holds the whole model, is accelerate's default and the pack's. ``train.fsdp = true``
asks accelerate to shard the trained module over the processes instead, as the reference does for its large
runs: every ``Block`` (the base's and the ControlNet's copies) is a unit of its own, gathered only while it
runs; what lies outside the blocks (embedders, final layer, ControlNet projections) is the root unit.
Parameters stay fp32, mixed precision being autocast as without FSDP (so a ControlNet's copies and its
base compute in one dtype), and checkpoints are gathered whole (``FULL_STATE_DICT``), so that accelerate's
state loads again and the saved weights load with the engine's loaders.

accelerate shards over GPU processes only: on CPU processes (gloo) it keeps DDP, and the run says so.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..models.layers import Block

if TYPE_CHECKING:
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin

log = logging.getLogger(__name__)


def fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """accelerate's FSDP (version 2, ``fully_shard``) settings: each ``Block`` a shard unit, fp32 parameters,
    whole checkpoints."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[Block.__name__],
        reshard_after_forward=True,
        mixed_precision_policy=MixedPrecisionPolicy(),  # no casts: parameters fp32, the loop's autocast computes
        state_dict_type="FULL_STATE_DICT",
    )


def report_sharding(accelerator: Accelerator) -> None:
    """Say when ``train.fsdp`` was asked for but accelerate did not shard (CPU processes, a single process)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type is not DistributedType.FSDP:
        log.warning(
            "train.fsdp: accelerate shards over several GPU processes only (accelerate launch on 2 or more GPUs); "
            "this run has %d process(es) on %s (accelerate's distributed type %s) and trains unsharded",
            accelerator.num_processes,
            accelerator.device.type,
            accelerator.distributed_type.value,
        )
