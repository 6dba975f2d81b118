"""Data parallelism with ``torch.distributed``: one process per device, launched by ``torchrun``.

``torchrun --standalone --nproc_per_node=N -m pplvae train ...`` starts N
processes (ranks) and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in each; :func:`init_from_env` joins them
into one process group. Everything else here is a no-op or the identity
when no group is initialized, so single-process code calls these helpers
unconditionally and keeps its numbers.

What runs where:

* training: every rank steps on its share of each global minibatch (the
  rows a ``DistributedSampler`` with ``set_epoch`` gives it, see
  :func:`shard_batches`) and ``DistributedDataParallel`` averages the
  gradients; metrics are sums all-reduced over ranks (:func:`all_reduce_sums`)
  before dividing by the global count;
* writing: rank 0 alone writes the run folder (:func:`is_rank0`); the others
  wait at :func:`barrier`;
* evaluation: the datapoints are split into contiguous ranges
  (:func:`shard_range`) and the per-datapoint results gathered to rank 0 in
  the original order (:func:`gather_in_order`).

Backends: ``gloo`` on the CPU; ``cpu:gloo,cuda:nccl`` where CUDA is present
(NCCL for CUDA tensors, one GPU per rank chosen by ``LOCAL_RANK``; gloo for
the CPU tensors of a run on ``--device cpu``).
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

logger = logging.getLogger(__name__)

#: Seconds a rank waits in a collective for the others before it fails with an error.
DEFAULT_TIMEOUT_S = 600
#: Multiplier of the rank in a rank's seed: seed + RANK_SEED_STRIDE * rank (rank 0 keeps ``seed``).
RANK_SEED_STRIDE = 1_000_003

__all__ = ["all_reduce_sums", "barrier", "destroy", "gather_in_order", "init_from_env", "is_initialized",
           "is_lost_rank_error", "is_rank0", "launched_by_torchrun", "local_device", "rank", "rank_seed", "shard_batches",
           "shard_range", "world_size"]


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group, 0 without one."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Processes in the group, 1 without one."""
    return dist.get_world_size() if is_initialized() else 1


def is_rank0() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def rank_seed(seed: int, rank_: int | None = None) -> int:
    """The seed of a rank's random stream: ``seed + 1_000_003 * rank`` (rank 0 keeps ``seed``)."""
    return seed + RANK_SEED_STRIDE * (rank() if rank_ is None else rank_)


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the process group described by torchrun's environment variables; a no-op without them.

    Uses ``env://`` rendezvous (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``,
    ``WORLD_SIZE``). Where CUDA is present, ``torch.cuda.set_device(LOCAL_RANK)``
    gives each rank its own GPU.

    Returns:
        True when a group was initialized (or already was), False when not under torchrun.

    Raises:
        ValueError: ``LOCAL_RANK`` names a GPU this machine does not have.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} GPUs; "
                             f"start at most that many processes per node (--nproc_per_node).")
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    logger.info("rank %d of %d joined the group (%s)", rank(), world_size(), backend)
    return True


def is_lost_rank_error(error: BaseException) -> bool:
    """Whether ``error`` says that a collective failed because another rank died or cannot be reached.

    ``torch.distributed.DistError`` (NCCL, timeouts), or gloo's ``RuntimeError``
    ("Connection reset by peer", "Connection closed by peer", "Timed out"), raised in a process group.
    """
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return is_initialized() and isinstance(error, RuntimeError) and "gloo" in text and (
        "Connection" in text or "Timed out" in text or "timed out" in text)


def destroy() -> None:
    """Leave the process group, if any."""
    if is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index becomes ``cuda:LOCAL_RANK`` in a group; every other device passes through."""
    if is_initialized() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def _collective_device() -> torch.device:
    """Where tensors for a collective must live: the rank's GPU under NCCL, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here; a no-op without a group."""
    if is_initialized():
        dist.barrier()


def all_reduce_sums(values: list[float | torch.Tensor]) -> list[float]:
    """Sum each number over the ranks (float64); the numbers themselves without a group.

    Every rank must pass the same count of numbers, in the same order.

    Example:
        >>> all_reduce_sums([1.5, torch.tensor(2.0)])
        [1.5, 2.0]
    """
    flat = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu().reshape(()) for v in values])
    if is_initialized():
        flat = flat.to(_collective_device())
        dist.all_reduce(flat)
    return flat.cpu().tolist()


def gather_in_order(tensor: torch.Tensor) -> torch.Tensor | None:
    """Concatenate each rank's (n_r, ...) tensor along dim 0 in rank order, on rank 0.

    The shards may differ in length (they are padded for the collective and
    cut back). Without a group, the tensor itself.

    Returns:
        on rank 0 a (sum_r n_r, ...) tensor on the device of ``tensor``; None on the other ranks.
    """
    if not is_initialized():
        return tensor
    device = _collective_device()
    local = tensor.detach().to(device)
    sizes = torch.tensor([local.shape[0]], dtype=torch.int64, device=device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size())]
    dist.all_gather(all_sizes, sizes)
    longest = int(max(s.item() for s in all_sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(pieces, padded)
    if not is_rank0():
        return None
    return torch.cat([piece[: int(n.item())] for piece, n in zip(pieces, all_sizes)]).to(tensor.device)


def gather_objects(obj) -> list | None:
    """Every rank's picklable ``obj`` as a list in rank order on rank 0 (None elsewhere); ``[obj]`` without a group."""
    if not is_initialized():
        return [obj]
    objects = [None] * world_size() if is_rank0() else None
    dist.gather_object(obj, objects, dst=0)
    return objects


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> slice:
    """The contiguous rows of ``n`` that a rank evaluates: ``torch.tensor_split`` of range(n) into world parts.

    Example:
        >>> [shard_range(5, r, 2) for r in range(2)]
        [slice(0, 3, None), slice(3, 5, None)]
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    base, extra = divmod(n, world)
    start = rank_ * base + min(rank_, extra)
    return slice(start, start + base + (rank_ < extra))


def shard_batches(n: int, batch_size: int, seed: int, epoch: int, rank_: int | None = None,
                  world: int | None = None) -> Iterator[torch.Tensor]:
    """This rank's row indices (CPU, int64) for each step of an epoch over ``n`` datapoints.

    A ``torch.utils.data.DistributedSampler(shuffle=True, seed=seed)`` with
    ``set_epoch(epoch)`` draws one permutation of range(n) from a generator
    seeded with ``seed + epoch``, the same on every rank, pads it by
    repeating its first rows to a multiple of the world size W, and gives
    rank r the rows ``perm[r::W]``; these are cut into minibatches of
    ``batch_size`` (B). Step s of all ranks together therefore covers the
    global minibatch ``perm[s*B*W : (s+1)*B*W]``: 2 ranks at B = 64 see the
    minibatches of 1 rank at B = 128. Every rank takes the same number of
    steps, ceil(ceil(n / W) / B). ``rank_`` and ``world`` default to this
    process's rank and the group's size.
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank_, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    rows = torch.tensor(list(sampler), dtype=torch.int64)
    return iter(rows.split(batch_size))
