"""Any data as minibatches of model arguments: tensors, tuples and dicts of tensors, Datasets, DataLoaders.

:func:`pplvae.fit` calls ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)``
on each minibatch. A minibatch becomes the programs' arguments by its type:

* a tensor ``x`` (B, ...) -> ``model(x)``;
* a tuple or list ``(x, y, ...)`` -> ``model(x, y, ...)`` (positional);
* a dict ``{"x": x, "y": y}`` -> ``model(x=x, y=y)`` (keywords).

Training data come as one of

* tensors held whole (a tensor, a tuple of tensors, a dict of tensors, all
  with the same leading size N): shuffled minibatches by index, on the
  tensors' device, the fastest road for data that fit in memory;
* a ``torch.utils.data.Dataset`` whose items are tensors, tuples or dicts:
  a ``DataLoader`` with ``batch_size``, shuffling, ``num_workers`` and
  ``pin_memory`` on CUDA, so data larger than memory stream from disk;
* a ``torch.utils.data.DataLoader``: used as it is (its own batch size and order).

Shuffling draws from torch's global random state (a ``DataLoader`` seeds
its sampler and workers from it), so a seeded run is reproducible and a
resumed one continues the same stream.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["Binarize", "batch_size_of", "check_data", "check_finite", "iterate_batches", "num_datapoints",
           "to_arguments"]


class Binarize:
    """Dynamic binarization as a transform: pixels x in [0, 1] -> b ~ Bernoulli(x), a fresh draw per call.

    For a ``Dataset``'s ``transform`` (e.g. torchvision's
    ``Compose([ToTensor(), Binarize()])``), so that a Bernoulli likelihood
    scores binary pixels as in Burda et al. (2016), section 5.2.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> Binarize()(torch.tensor([0.0, 1.0, 1.0]))
        tensor([0., 1., 1.])
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(x)

    def __repr__(self) -> str:
        return "Binarize()"


def to_arguments(batch: Any, device: torch.device | None = None) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of ``model``/``guide`` for one minibatch, tensors moved to ``device``.

    Raises:
        TypeError: a minibatch that is not a tensor, a tuple/list or a dict.
    """
    def move(value):
        if device is not None and isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=value.is_pinned())
        return value

    if isinstance(batch, torch.Tensor):
        return (move(batch),), {}
    if isinstance(batch, Mapping):
        return (), {key: move(value) for key, value in batch.items()}
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return tuple(move(value) for value in batch), {}
    raise TypeError(
        f"A minibatch must be a tensor, a tuple of positional arguments or a dict of keyword arguments "
        f"of the model, got {type(batch).__name__}."
    )


def batch_size_of(args: tuple, kwargs: dict) -> int:
    """B, the leading size of the first tensor among the arguments.

    Raises:
        ValueError: no tensor argument.
    """
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("A minibatch needs a tensor argument whose dim 0 runs over its datapoints.")


def check_finite(value: torch.Tensor, name: str) -> None:
    """Refuse a floating-point tensor (N, ...) that holds NaN or infinite values, naming its rows.

    One reduction over ``value`` where it is finite (the common case); the rows
    are found only where it is not.

    Raises:
        ValueError: "``name`` holds NaN or infinite values in R row(s): [i, ...]"
            (at most ten row indices along dim 0, then how many more).
    """
    if not value.is_floating_point() or value.dim() == 0 or bool(torch.isfinite(value).all()):
        return
    bad = (~torch.isfinite(value.reshape(len(value), -1))).any(1).nonzero().flatten().tolist()
    rows = f"{bad[:10]} and {len(bad) - 10} more" if len(bad) > 10 else f"{bad}"
    raise ValueError(f"{name} holds NaN or infinite values in {len(bad)} row(s): {rows}.")


def check_data(data, what: str = "the training data") -> None:
    """Check training or test data before any step: no datapoints, mismatched or non-finite tensors.

    Tensors held whole (a tensor, or a tuple, list or dict of them) are
    read once; a ``Dataset`` or ``DataLoader`` only has its length checked
    (its items are not read here). ``None`` passes.

    Raises:
        ValueError: no datapoints (tensors of leading size 0, a ``Dataset``
            of length 0), tensors of different leading sizes, or a
            floating-point tensor with NaN or infinite values (its rows
            named), so that a bad datapoint is named before any step rather
            than reported as a diverged loss.
    """
    if data is None:
        return
    tensors = _tensors(data)
    if tensors is None:
        if num_datapoints(data) == 0:
            raise ValueError(f"{what} has no datapoints (an empty {type(data).__name__}); pass at least one.")
        return
    if _leading_size(tensors, what) == 0:
        shapes = [tuple(t.shape) for t in tensors]
        raise ValueError(f"{what} has no datapoints (tensors of shapes {shapes}); pass at least one row.")
    names = list(data) if isinstance(data, Mapping) else range(len(tensors))
    for name, tensor in zip(names, tensors):
        check_finite(tensor, what if isinstance(data, torch.Tensor) else f"{what} ({name!r})")


def _leading_size(tensors: list[torch.Tensor], what: str) -> int:
    """N, the leading size all ``tensors`` share; ValueError naming their shapes where they do not."""
    if any(t.dim() == 0 or t.shape[0] != tensors[0].shape[0] for t in tensors):
        raise ValueError(f"The tensors of {what} must share their leading size (the datapoints), got "
                         f"{[tuple(t.shape) for t in tensors]}.")
    return tensors[0].shape[0]


def _tensors(data) -> list[torch.Tensor] | None:
    if isinstance(data, torch.Tensor):
        return [data]
    if isinstance(data, Mapping) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return list(data.values())
    if isinstance(data, (tuple, list)) and data and all(isinstance(v, torch.Tensor) for v in data):
        return list(data)
    return None


def num_datapoints(data) -> int | None:
    """N of training data of any kind accepted by :func:`iterate_batches`; None where unknown (an iterable Dataset)."""
    tensors = _tensors(data)
    if tensors is not None:
        return tensors[0].shape[0]
    dataset = data.dataset if isinstance(data, DataLoader) else data
    try:
        return len(dataset)
    except TypeError:
        return None


def iterate_batches(
    data,
    batch_size: int,
    shuffle: bool = True,
    device: torch.device | None = None,
    num_workers: int = 0,
    rows: Iterable[torch.Tensor] | None = None,
) -> Iterator[tuple[tuple, dict]]:
    """One pass over ``data`` as ``(args, kwargs)`` minibatches on ``device`` (see the module's docstring).

    Args:
        data: tensors (a tensor, tuple or dict of tensors of equal leading size),
            a ``Dataset`` or a ``DataLoader``.
        batch_size: datapoints per minibatch (not used for a ``DataLoader``).
        shuffle: a random order (training) or the stored one (evaluation).
        device: where the arguments go; None leaves them where they are.
        num_workers: worker processes of the ``DataLoader`` made for a ``Dataset``.
        rows: the minibatches' row indices (int64 tensors, e.g. one rank's share
            from :func:`pplvae.distributed.shard_batches`) instead of
            ``batch_size`` and ``shuffle``; tensors and a ``Dataset`` only.

    Raises:
        ValueError: tensors of different leading sizes.
        TypeError: data of another kind.
    """
    tensors = _tensors(data)
    if tensors is not None:
        n = _leading_size(tensors, "the data")
        steps = rows
        if steps is None:
            order = torch.randperm(n, device=tensors[0].device) if shuffle else None
            steps = (slice(start, start + batch_size) if order is None else order[start : start + batch_size]
                     for start in range(0, n, batch_size))
        for rows in steps:
            if isinstance(rows, torch.Tensor):
                rows = rows.to(tensors[0].device)
            if isinstance(data, torch.Tensor):
                batch = data[rows]
            elif isinstance(data, Mapping):
                batch = {key: value[rows] for key, value in data.items()}
            else:
                batch = tuple(value[rows] for value in data)
            yield to_arguments(batch, device)
        return
    if isinstance(data, Dataset):
        pin = device is not None and torch.device(device).type == "cuda"
        if rows is not None:
            data = DataLoader(data, batch_sampler=[r.tolist() for r in rows], num_workers=num_workers, pin_memory=pin)
        else:
            data = DataLoader(data, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, pin_memory=pin)
    if not isinstance(data, DataLoader):
        raise TypeError(
            f"Training data must be tensors, a torch Dataset or a DataLoader (or pplvae's ImageData), "
            f"got {type(data).__name__}."
        )
    for batch in data:
        yield to_arguments(batch, device)
