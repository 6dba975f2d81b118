"""A whole image data set held as tensors on one device, with minibatches by shuffled index."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import torch

#: Seed of the one fixed binarization of every test set, so that test numbers
#: of Bernoulli models are comparable between runs and machines.
TEST_BINARIZATION_SEED = 0


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw binary pixels ``b ~ Bernoulli(x)`` elementwise (Burda et al. 2016, section 5.2).

    Args:
        x: grey levels in [0, 1], any shape.
        generator: optional torch generator on ``x``'s device.

    Returns:
        a float tensor of 0s and 1s, the shape of ``x``.
    """
    return torch.bernoulli(x, generator=generator)


@dataclass
class ImageData:
    """A train/test split of flattened images, whole, on one device.

    Attributes:
        name: the data set's name, e.g. ``"mnist"``.
        x_train: (N_train, x_dim) float32 pixels in [0, 1]; grey levels, even
            when ``binarized`` (a fresh binarization is drawn per minibatch).
        y_train: (N_train,) int64 labels, or None when the data set has none.
        x_test: (N_test, x_dim) float32; when ``binarized``, one fixed
            binarization drawn with :data:`TEST_BINARIZATION_SEED`.
        y_test: (N_test,) int64 labels, or None.
        image_shape: (height, width) of one image; ``height * width == x_dim``.
        binarized: whether minibatches are dynamically binarized (for
            Bernoulli likelihoods) and the test set fixed-binarized.

    Raises:
        ValueError: on tensors of the wrong rank or width, pixels outside
            [0, 1] or not finite (NaN, inf), or labels of another count than images.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    image_shape: tuple[int, int]
    binarized: bool = False

    def __post_init__(self):
        height, width = self.image_shape
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            if x.dim() != 2 or x.shape[1] != height * width:
                raise ValueError(
                    f"{self.name}: x_{split} must have shape (N, {height * width}) for images "
                    f"of {height}x{width}, got {tuple(x.shape)}; flatten images with "
                    f"x.reshape(len(x), -1)."
                )
            y = getattr(self, f"y_{split}")
            if y is not None and len(y) != len(x):
                raise ValueError(f"{self.name}: {len(y)} {split} labels for {len(x)} {split} images; "
                                 f"the label and image files do not belong together.")
            bad = ~torch.isfinite(x)
            if bad.any():
                raise ValueError(
                    f"{self.name}: x_{split} holds {int(bad.sum())} non-finite values (NaN or "
                    f"inf), first at flat index {int(bad.flatten().nonzero()[0])}; clean the "
                    f"data before training."
                )
            if x.min() < 0 or x.max() > 1:
                raise ValueError(
                    f"{self.name}: x_{split} pixels must lie in [0, 1], found range "
                    f"[{float(x.min()):.3g}, {float(x.max()):.3g}]; divide uint8 images by 255."
                )

    @property
    def x_dim(self) -> int:
        """Pixels per image, height x width."""
        return self.x_train.shape[1]

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: torch.device | str) -> "ImageData":
        """A copy with every tensor on ``device``."""

        def move(t):
            return None if t is None else t.to(device)

        return replace(
            self,
            x_train=move(self.x_train),
            y_train=move(self.y_train),
            x_test=move(self.x_test),
            y_test=move(self.y_test),
        )

    def train_batches(
        self, batch_size: int, generator: torch.Generator | None = None,
        rows: Iterable[torch.Tensor] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """One epoch of shuffled minibatches ``(x, y)``: x (B, x_dim), y (B,) or None.

        The last minibatch is shorter when ``batch_size`` does not divide
        N_train. When ``binarized``, each image is drawn afresh as
        ``Bernoulli(pixels)`` (dynamic binarization). Randomness comes from
        ``generator`` if given, else torch's global RNG on the data's device.
        ``rows``: the minibatches' row indices (int64 tensors, e.g. one rank's
        share from :func:`pplvae.distributed.shard_batches`) instead of a
        shuffle of all rows.
        """
        n = self.x_train.shape[0]
        if rows is None:
            order = torch.randperm(n, device=self.device, generator=generator)
            rows = (order[start : start + batch_size] for start in range(0, n, batch_size))
        for idx in rows:
            idx = idx.to(self.device)
            x = self.x_train[idx]
            if self.binarized:
                x = binarize(x, generator)
            yield x, (None if self.y_train is None else self.y_train[idx])

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """The test set in order, in minibatches ``(x, y)`` of at most ``batch_size``."""
        for start in range(0, self.x_test.shape[0], batch_size):
            stop = start + batch_size
            yield self.x_test[start:stop], (None if self.y_test is None else self.y_test[start:stop])


def make_image_data(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor | None],
    test: tuple[torch.Tensor, torch.Tensor | None],
    image_shape: tuple[int, int],
    binarized: bool,
) -> ImageData:
    """Build :class:`ImageData` from uint8 images (N, H, W) and optional labels (N,).

    Pixels are scaled to [0, 1]; when ``binarized`` the test images get their
    one fixed binarization (seed :data:`TEST_BINARIZATION_SEED`, on the CPU so
    it is the same on every machine).
    """
    x_train = train[0].reshape(len(train[0]), -1).float() / 255.0
    x_test = test[0].reshape(len(test[0]), -1).float() / 255.0
    if binarized:
        x_test = binarize(x_test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    labels = [None if y is None else y.long() for y in (train[1], test[1])]
    return ImageData(name, x_train, labels[0], x_test, labels[1], image_shape, binarized)
