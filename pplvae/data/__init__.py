"""Real data sets held whole on the device: MNIST and Frey Face."""

from __future__ import annotations

import os

import torch

from pplvae.data import freyface, mnist
from pplvae.data.batches import Binarize
from pplvae.data.freyface import load_freyface
from pplvae.data.images import ImageData, binarize
from pplvae.data.mnist import load_mnist
from pplvae.data.paths import ENV_VAR, DataNotFoundError

DATASETS = ("mnist", "freyface")
#: (height, width) of one image of each data set.
IMAGE_SHAPES = {"mnist": mnist.IMAGE_SHAPE, "freyface": freyface.IMAGE_SHAPE}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    binarized: bool | None = None,
    device: torch.device | str = "cpu",
    train_size: int | None = None,
    test_size: int | None = None,
) -> ImageData:
    """Load a data set by name and move it, whole, to ``device``.

    Args:
        name: ``"mnist"`` or ``"freyface"``.
        data_dir: folder holding the files (MNIST: ``MNIST/raw``; Frey Face:
            ``frey_rawface.mat`` or ``FreyFace/``); default: ``$PPLVAE_DATA_DIR``,
            then the per-user cache (MNIST) or the packaged copy (Frey Face,
            also used when the folder holds no Frey Face file).
        download: allow a download of MNIST when no folder holds it.
        binarized: dynamic/fixed binarization for Bernoulli likelihoods;
            default True for MNIST and False for Frey Face.
        device: where the tensors live.
        train_size, test_size: keep only the first images of each split (for
            quick runs); None keeps all.

    Returns:
        :class:`ImageData`.

    Raises:
        ValueError: unknown ``name`` or a non-positive size.
        DataNotFoundError: the files cannot be found or read.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    for label, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None and size <= 0:
            raise ValueError(f"{label} must be a positive number of images, got {size}.")
    if name == "mnist":
        data = load_mnist(data_dir, download, True if binarized is None else binarized)
    else:
        folder = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
        if folder is not None and os.path.isdir(folder) and not freyface.find_in_folder(folder):
            folder = None  # a data folder for MNIST alone: the packaged copy of Frey Face
        data = load_freyface(folder, bool(binarized))
    if train_size is not None or test_size is not None:
        data = ImageData(
            data.name,
            data.x_train[:train_size],
            None if data.y_train is None else data.y_train[:train_size],
            data.x_test[:test_size],
            None if data.y_test is None else data.y_test[:test_size],
            data.image_shape,
            data.binarized,
        )
    return data.to(device)


__all__ = [
    "Binarize",
    "DATASETS",
    "DataNotFoundError",
    "IMAGE_SHAPES",
    "ImageData",
    "binarize",
    "load_dataset",
    "load_freyface",
    "load_mnist",
]
