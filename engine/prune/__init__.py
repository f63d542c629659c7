"""Communication-aware model compression, step 2 of the framework of Shao & Zhang 2020 ("Incremental network
pruning"): l2-norm channel groups and masks (`groups`), per-group targets from measured sensitivity (`allocation`),
the incremental mask/train/restore iteration with activation pruning of the split output (`incremental`), and
physical removal of the pruned channels (`removal`). Only the device part of a split model is pruned; the server part
only has its first layer adapted to the channels the device still sends.

Example (the training loop lives elsewhere)::

    pruner = IncrementalPruner(device, SparsitySchedule(0.5, {"output": 0.75}, ramp_iterations=10,
                                                        iteration_steps=200))
    for i, (x, y) in enumerate(batches):
        pruner.step(i)                        # or pruner.before_step()
        loss = F.cross_entropy(server(device(x)), y)
        opt.zero_grad(); loss.backward(); opt.step()
        pruner.after_step()
    masks = pruner.finalize()
    small_device, small_server = remove_pruned_channels(device, masks, server)
"""

from engine.prune.allocation import SENSITIVITY_IMAGES, SENSITIVITY_STEPS, allocate, device_flops, sensitivity
from engine.prune.groups import (
    ChannelGroup,
    ChannelMasks,
    apply_masks,
    channel_norms,
    compute_masks,
    masks_from_scores,
    prunable_groups,
    target_for,
)
from engine.prune.incremental import RAMPS, IncrementalPruner, SparsitySchedule
from engine.prune.removal import ExpandChannels, adapt_server, remove_pruned_channels

__all__ = ["RAMPS", "SENSITIVITY_IMAGES", "SENSITIVITY_STEPS", "ChannelGroup", "ChannelMasks", "ExpandChannels",
           "IncrementalPruner", "SparsitySchedule", "adapt_server", "allocate", "apply_masks", "channel_norms",
           "compute_masks", "device_flops", "masks_from_scores", "prunable_groups", "remove_pruned_channels",
           "sensitivity", "target_for"]
