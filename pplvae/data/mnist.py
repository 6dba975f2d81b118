"""MNIST (LeCun, Cortes & Burges) through ``torchvision.datasets.MNIST``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.datasets import MNIST

from pplvae.data.images import ImageData, make_image_data
from pplvae.data.paths import DataNotFoundError, candidate_dirs, not_found_message

IMAGE_SHAPE = (28, 28)
IDX_MAGIC = {"train-images-idx3-ubyte": 0x803, "train-labels-idx1-ubyte": 0x801,
             "t10k-images-idx3-ubyte": 0x803, "t10k-labels-idx1-ubyte": 0x801}  # IDX headers: uint8, 3 or 1 dims


def _read(root: str, download: bool) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    splits = [MNIST(root, train=train, download=download) for train in (True, False)]
    return tuple((s.data, s.targets) for s in splits)


def load_mnist(
    data_dir: str | os.PathLike | None = None, download: bool = False, binarized: bool = True
) -> ImageData:
    """The 60,000 training and 10,000 test digits of MNIST, pixels in [0, 1].

    Looks in the folders of :func:`pplvae.data.paths.candidate_dirs` for
    ``MNIST/raw/*-ubyte`` (the layout torchvision reads) and takes the first
    that loads. With ``download=True`` torchvision downloads the files into the
    first folder when no folder holds them.

    Args:
        data_dir: the folder holding ``MNIST/raw``; see ``candidate_dirs``.
        download: allow torchvision to download the canonical files.
        binarized: dynamic binarization of training minibatches and a fixed
            binarization of the test set (for Bernoulli likelihoods).

    Returns:
        :class:`ImageData` with x (N, 784) float32, y (N,) int64 labels 0-9.

    Raises:
        DataNotFoundError: the files are missing or corrupt (a bad IDX
            header, as many labels as images) in every folder tried; the
            message names the folders, the bad file and the two fixes.
    """
    tried = []
    candidates = candidate_dirs(data_dir)
    for i, (folder, origin) in enumerate(candidates):
        try:
            train, test = _read(str(folder), download=download and i == 0)
            return make_image_data("mnist", train, test, IMAGE_SHAPE, binarized)
        except Exception as error:  # torchvision raises RuntimeError, corrupt files others
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            tried.append((folder, origin, _bad_header(folder) or reason))
    raise DataNotFoundError(not_found_message("MNIST", tried))


def _bad_header(folder) -> str | None:
    """Which IDX file under ``folder/MNIST/raw`` has a header other than MNIST's, if one has."""
    for name, magic in IDX_MAGIC.items():
        path = Path(folder) / "MNIST" / "raw" / name
        if path.exists():
            with open(path, "rb") as f:
                header = f.read(4)
            if int.from_bytes(header, "big") != magic:
                return f"{path} is not an MNIST IDX file (header {header.hex() or 'empty'}, expected {magic:08x})"
    return None
