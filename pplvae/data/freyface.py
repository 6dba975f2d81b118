"""Frey Face (Brendan Frey): 1,965 face images of 28x20, as in Kingma & Welling (2013), section 5."""

from __future__ import annotations

import os
from pathlib import Path

import scipy.io
import torch

from pplvae.data.images import ImageData, make_image_data
from pplvae.data.paths import DataNotFoundError

#: The copy of ``frey_rawface.mat`` shipped inside the package (1.1 MB).
PACKAGED_FILE = Path(__file__).with_name("frey_rawface.mat")
IMAGE_SHAPE = (28, 20)
NUM_TEST = 200
SPLIT_SEED = 0


def find_in_folder(folder: str | os.PathLike) -> Path | None:
    """``folder/frey_rawface.mat`` or ``folder/FreyFace/frey_rawface.mat``, whichever exists first; else None."""
    folder = Path(folder)
    return next((f for f in (folder / "frey_rawface.mat", folder / "FreyFace" / "frey_rawface.mat") if f.exists()),
                None)


def load_freyface(
    path: str | os.PathLike | None = None, binarized: bool = False, num_test: int = NUM_TEST
) -> ImageData:
    """Frey Face split into 1,765 training and 200 test images, pixels in [0, 1].

    The split is a fixed permutation drawn with seed :data:`SPLIT_SEED`, the
    same on every machine. The MATLAB file holds one variable ``ff`` of shape
    (560, 1965), one image per column, rows of 20 pixels in row-major order.

    Args:
        path: a ``frey_rawface.mat`` file, or a folder holding it directly or
            under ``FreyFace/``; default: the copy shipped with the package.
        binarized: binarize as for MNIST (Frey Face is normally modelled with
            a Gaussian likelihood, so the default is False).
        num_test: images held out for the test set.

    Returns:
        :class:`ImageData` with x (N, 560) float32 and no labels.

    Raises:
        DataNotFoundError: the file is missing or not a readable ``.mat`` with ``ff`` of shape (560, N).
    """
    file = Path(path) if path is not None else PACKAGED_FILE
    if file.is_dir():
        file = find_in_folder(file) or file / "frey_rawface.mat"
    try:
        ff = scipy.io.loadmat(file)["ff"]
    except (OSError, ValueError, KeyError) as error:
        raise DataNotFoundError(
            f"Could not read Frey Face from {file} ({type(error).__name__}: {error}). Pass the path "
            f"of frey_rawface.mat, or omit it to use the copy shipped in {PACKAGED_FILE}."
        ) from error
    if getattr(ff, "ndim", 0) != 2 or ff.shape[0] != IMAGE_SHAPE[0] * IMAGE_SHAPE[1] or ff.dtype.kind not in "ui":
        raise DataNotFoundError(
            f"{file} holds ff of shape {getattr(ff, 'shape', '?')} and type {getattr(ff, 'dtype', '?')}; Frey Face "
            f"is uint8 of shape ({IMAGE_SHAPE[0] * IMAGE_SHAPE[1]}, N), one {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} image per column."
        )
    images = torch.from_numpy(ff.T.copy()).reshape(-1, *IMAGE_SHAPE)  # (1965, 28, 20) uint8
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, train = images[order[:num_test]], images[order[num_test:]]
    return make_image_data("freyface", (train, None), (test, None), IMAGE_SHAPE, binarized)
