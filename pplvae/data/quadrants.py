"""The MNIST quadrant task of Sohn et al. (2015): observe 1, 2 or 3 quadrants of a digit, predict the rest.

An image x of shape (N, H*W) is split by a fixed boolean mask over pixels into
the observed pixels ``x_obs`` (N, D_obs) and the target pixels ``y`` (N, D_y),
D_obs + D_y = H*W, both in row-major pixel order. The quadrants follow Pyro's
CVAE example (``examples/cvae/mnist.py``): 1 observed quadrant is the bottom
left, 2 are the left half, 3 are all but the bottom right.

References:
    [1] K. Sohn, H. Lee, X. Yan (2015), "Learning Structured Output
        Representation using Deep Conditional Generative Models", NeurIPS,
        section 5.1 (MNIST quadrant prediction).
"""

from __future__ import annotations

import torch

__all__ = ["join_quadrants", "quadrant_mask", "split_quadrants"]


def quadrant_mask(image_shape: tuple[int, int], observed_quadrants: int) -> torch.Tensor:
    """Which pixels are observed: a bool tensor (H*W,), True on the observed quadrants.

    Raises:
        ValueError: ``observed_quadrants`` not 1, 2 or 3.

    Example:
        >>> quadrant_mask((2, 2), 1).tolist()  # bottom-left pixel of a 2x2 image
        [False, False, True, False]
        >>> int(quadrant_mask((28, 28), 3).sum())
        588
    """
    if observed_quadrants not in (1, 2, 3):
        raise ValueError(f"observed_quadrants must be 1, 2 or 3, got {observed_quadrants}.")
    height, width = image_shape
    observed = torch.zeros(height, width, dtype=torch.bool)
    observed[height // 2 :, : width // 2] = True  # bottom left
    if observed_quadrants >= 2:
        observed[:, : width // 2] = True  # left half
    if observed_quadrants == 3:
        observed[: height // 2, :] = True  # and the top half
    return observed.reshape(-1)


def split_quadrants(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_obs, y)``: the observed pixels (N, D_obs) and the target pixels (N, D_y) of x (N, H*W)."""
    return x[:, mask], x[:, ~mask]


def join_quadrants(x_obs: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`split_quadrants`: whole images (N, H*W) from (N, D_obs) and (N, D_y).

    Example:
        >>> mask = quadrant_mask((2, 2), 2)
        >>> x = torch.arange(4.0).reshape(1, 4)
        >>> torch.equal(join_quadrants(*split_quadrants(x, mask), mask), x)
        True
    """
    x = y.new_empty(y.shape[0], mask.numel())
    x[:, mask] = x_obs
    x[:, ~mask] = y
    return x
