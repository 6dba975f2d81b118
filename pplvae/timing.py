"""Which of a few ways of doing the same work is fastest on this machine: timed, rounds alternating.

Used where the answer depends on the CPU, its math library or the GPU and so
is measured rather than written into the code: the compiled estimator's chunk
size (:meth:`pplvae.compiled_chunks.CompiledLogWeights.fastest_chunk_shape`)
and whether an unfusable transcendental runs by ATen's kernel or Inductor's
loop (:func:`pplvae.inductor_passes.faster_in_aten`).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Hashable, Mapping, Optional

import torch

__all__ = ["fastest"]


def fastest(contenders: Mapping[Hashable, Callable[[], object]], rounds: int = 3,
            work: Optional[Mapping[Hashable, float]] = None, device: Optional[torch.device] = None) -> Hashable:
    """The key of the contender with the least time per unit of work, best round of each.

    Every round runs each contender once, in turn, so that a burst of load on
    a shared machine does not fall on one contender alone; a contender's time
    is its fastest round. Nothing is run before the first round: warm up (and
    compile) first.

    Args:
        contenders: key -> a call doing that contender's work.
        rounds: timed runs of each contender.
        work: key -> the amount of work one call does (e.g. samples x
            datapoints); times are divided by it. Default: 1 for every key.
        device: on a CUDA device, the device is synchronized around every
            timed call.

    Returns:
        The key of the fastest contender.

    Raises:
        ValueError: if ``contenders`` is empty.
    """
    if not contenders:
        raise ValueError("fastest() needs at least one contender to time.")
    cuda = device is not None and device.type == "cuda"
    best = dict.fromkeys(contenders, math.inf)
    for _ in range(rounds):
        for key, run in contenders.items():
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize(device)
            best[key] = min(best[key], (time.perf_counter() - start) / (1 if work is None else work[key]))
    return min(best, key=best.get)
