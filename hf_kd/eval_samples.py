"""Which samples of an evaluation batch are real, not Accelerate's padding.

With several processes Accelerate pads the last evaluation batch of each process with
samples from the start of the dataset, so that every process runs the same number of
equal batches; ``Accelerator.gather_for_metrics`` then keeps only the first ``remainder``
samples of the rank-major concatenation of the processes' last batches. This module gives
each process the number of its own samples that gather keeps, a Python ``int`` read from
the data loader's state: no communication and no host sync.
"""

from __future__ import annotations

from accelerate import Accelerator


def samples_kept_by_gather(accelerator: Accelerator, batch_size: int) -> int:
    """How many of this process's ``batch_size`` samples ``gather_for_metrics`` keeps.

    Every sample, except in the last batch of a data loader of known length whose size is
    not a multiple of the global batch: there process ``r`` (equal batches of ``b`` on every
    process) keeps ``clamp(remainder - r * b, 0, b)`` samples, the first ones of its batch.
    """
    state = accelerator.gradient_state
    if not state.end_of_dataloader or state.remainder <= 0:
        return batch_size
    offset = accelerator.process_index * batch_size
    return max(0, min(batch_size, state.remainder - offset))
