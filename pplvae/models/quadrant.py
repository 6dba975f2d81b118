"""Structured output prediction on MNIST quadrants: the conditional VAE of Sohn et al. (2015) and its baseline.

Given the observed pixels x (1, 2 or 3 quadrants of a digit) predict the
target pixels y (the other quadrants). Both models take ``(x, y)``, x (N, D_obs)
and binary y (N, D_y), and compute from a whole image with ``batch_args``
(the split is :func:`pplvae.data.quadrants.split_quadrants`), so they train
with :func:`pplvae.fit` on plain MNIST.

References:
    [1] K. Sohn, H. Lee, X. Yan (2015), "Learning Structured Output
        Representation using Deep Conditional Generative Models", NeurIPS:
        section 3 (the CVAE, its bound on log p(y | x) and the importance-sampling
        estimate of the conditional log-likelihood), section 3.3 (the baseline
        network's prediction fed to the prior network, and the CVAE initialised
        from the trained baseline), section 5.1 (the MNIST quadrant task).
    [2] Pyro's CVAE tutorial, ``examples/cvae/`` (500-500 ReLU networks, z of
        200, a frozen pre-trained baseline feeding the prior network).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pplvae.data.quadrants import join_quadrants, quadrant_mask, split_quadrants
from pplvae.networks import BernoulliDecoder, GaussianEncoder, concat


@dataclass
class QuadrantConfig:
    """Sizes of the quadrant models (defaults: Pyro's CVAE tutorial).

    Attributes:
        x_dim: pixels of a whole image, from the data (784 for MNIST).
        observed_quadrants: 1, 2 or 3 (see :func:`pplvae.data.quadrants.quadrant_mask`).
        z_dim: latent dimensions of the CVAE (unused by the baseline).
        hidden_dims: widths of the hidden layers of every network.
        activation: as for :class:`pplvae.VAEConfig`.
        likelihood: only ``"bernoulli"``: the targets are binarized pixels.
        image_shape: (height, width); default a square of x_dim pixels.
    """

    x_dim: int
    observed_quadrants: int = 1
    z_dim: int = 200
    hidden_dims: tuple[int, ...] = (500, 500)
    activation: str = "relu"
    likelihood: str = "bernoulli"
    image_shape: tuple[int, int] | None = None

    def __post_init__(self):
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if self.image_shape is None:
            side = round(self.x_dim**0.5)
            if side * side != self.x_dim:
                raise ValueError(f"x_dim={self.x_dim} is not a square image; give image_shape.")
            self.image_shape = (side, side)
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if self.image_shape[0] * self.image_shape[1] != self.x_dim:
            raise ValueError(f"image_shape {self.image_shape} does not hold x_dim={self.x_dim} pixels.")
        if self.likelihood != "bernoulli":
            raise ValueError("The quadrant models score binarized pixels: likelihood must be 'bernoulli'.")
        if min(self.z_dim, *self.hidden_dims) <= 0:
            raise ValueError(f"z_dim and hidden_dims must be positive, got {self}.")
        quadrant_mask(self.image_shape, self.observed_quadrants)  # raises on a bad number


class _QuadrantModel(PyroModule):
    """What both quadrant models share: the mask, the split of an image, and its inverse."""

    config_class = QuadrantConfig

    def __init__(self, config: QuadrantConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mask", quadrant_mask(config.image_shape, config.observed_quadrants))
        self.obs_dim = int(self.mask.sum())  # D_obs
        self.target_dim = config.x_dim - self.obs_dim  # D_y

    def batch_args(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
        """``(x_obs, y)`` of whole images x (N, x_dim): (N, D_obs) and (N, D_y); labels are unused."""
        return split_quadrants(x, self.mask)

    def join(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whole images (N, x_dim) from observed pixels (N, D_obs) and target pixels (N, D_y)."""
        return join_quadrants(x, y, self.mask)

    def _check(self, x: torch.Tensor, y: torch.Tensor | None, who: str) -> None:
        if x.dim() != 2 or x.shape[1] != self.obs_dim or (
            y is not None and y.shape != (x.shape[0], self.target_dim)
        ):
            raise ValueError(
                f"{who} expects x (N, {self.obs_dim}) observed and y (N, {self.target_dim}) target "
                f"pixels, got {tuple(x.shape)} and {None if y is None else tuple(y.shape)}; "
                f"split whole images with batch_args(x)."
            )


class QuadrantBaseline(_QuadrantModel):
    """The deterministic baseline: p(y | x) = prod_d Bernoulli(y_d; sigmoid(f_d(x))) ([1] section 5.1, "NN").

    A model with no latent variable and an empty guide: its ELBO is exactly
    log p(y | x), nats per image summed over the target pixels, so it trains
    with :func:`pplvae.fit` and is scored by the importance-sampling estimator
    unchanged. Site: the observed ``"y"`` (N, D_y) in the plate ``"data"``.

    Example:
        >>> baseline = QuadrantBaseline(QuadrantConfig(x_dim=784, observed_quadrants=2))
        >>> x, y = baseline.batch_args(torch.zeros(3, 784))
        >>> x.shape, y.shape
        (torch.Size([3, 392]), torch.Size([3, 392]))
        >>> float(pyro.infer.Trace_ELBO().loss(baseline.model, baseline.guide, x, y)) > 0
        True
    """

    name = "quadrant-baseline"

    def __init__(self, config: QuadrantConfig):
        super().__init__(config)
        self.net = BernoulliDecoder(self.obs_dim, self.target_dim, config.hidden_dims, config.activation)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._check(x, y, "QuadrantBaseline.model")
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", self.net(x), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """No latent variables: nothing to sample."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities of p(y | x), (N, D_y)."""
        return self.net.mean(x)

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whole images (N, x_dim): the observed pixels and the prediction's probabilities."""
        return self.join(x, self.predict(x))


class QuadrantCVAE(_QuadrantModel):
    """The CVAE of [1] section 3: prior network p(z | x), generation network p(y | x, z), guide q(z | x, y).

    model:  z | x ~ N(mu([x, ŷ(x)]), diag(sigma([x, ŷ(x)])^2)),  y | x, z ~ Bernoulli(logits=g([x, z]))
    guide:  z | x, y ~ N(z_loc([x, y]), diag(z_scale([x, y])^2))

    ŷ(x) is the prediction of a trained :class:`QuadrantBaseline` held inside
    the model with its weights frozen (``self.baseline``): the prior network
    sees the observed pixels and the baseline's guess for the rest ([1]
    section 3.3; Pyro's tutorial does the same). :meth:`init_from_baseline`
    also makes the generation network start as the baseline, so training
    starts from the baseline's p(y | x) and the ELBO bounds log p(y | x) in
    nats per image, summed over the target pixels. Sites, in the plate
    ``"data"``: ``"z"`` (N, z_dim) and the observed ``"y"`` (N, D_y).

    ``pplvae train --model quadrant-cvae`` fits it alone, with the baseline
    left at its random initial weights; the paper's protocol (baseline
    first, then the CVAE started from it) is ``examples/cvae_quadrants.py``.

    Example:
        >>> cvae = QuadrantCVAE(QuadrantConfig(x_dim=784, observed_quadrants=3))
        >>> args = cvae.batch_args(torch.zeros(3, 784))
        >>> loss = pyro.infer.Trace_ELBO().loss(cvae.model, cvae.guide, *args)
        >>> cvae.predict(args[0], num_samples=5).shape  # five draws of the mean of y for each input
        torch.Size([5, 3, 196])
    """

    name = "quadrant-cvae"

    def __init__(self, config: QuadrantConfig):
        super().__init__(config)
        hidden, act, d = config.hidden_dims, config.activation, config.x_dim
        self.baseline = QuadrantBaseline(config)
        self.baseline.requires_grad_(False)
        self.prior_net = GaussianEncoder(d, config.z_dim, hidden, act)  # p(z | x, ŷ(x)), input D_obs + D_y
        self.recognition_net = GaussianEncoder(d, config.z_dim, hidden, act)  # q(z | x, y)
        self.generation_net = BernoulliDecoder(self.obs_dim + config.z_dim, self.target_dim, hidden, act)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, y, "QuadrantCVAE.model")
        with pyro.plate("data", x.shape[0]):
            y_hat = self.baseline.predict(x)
            z = pyro.sample("z", dist.Normal(*self.prior_net(concat([x, y_hat]))).to_event(1))
            return pyro.sample("y", self.generation_net(concat([x, z])), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._check(x, y, "QuadrantCVAE.guide")
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*self.recognition_net(concat([x, y]))).to_event(1))

    # Helpers for initialisation and pictures; the math is all above.

    @torch.no_grad()
    def init_from_baseline(self, baseline: QuadrantBaseline) -> "QuadrantCVAE":
        """Start from a trained baseline: copy it into ``self.baseline`` and the generation network.

        The generation network g([x, z]) gets the baseline's weights on x and
        zero weights on z, so at the start p(y | x, z) = p_baseline(y | x) for
        every z and log p(y | x) equals the baseline's. Returns ``self``.

        Raises:
            ValueError: the baseline has other sizes or quadrants than this model.
        """
        if (baseline.config.observed_quadrants, baseline.config.hidden_dims, baseline.config.activation) != (
            self.config.observed_quadrants, self.config.hidden_dims, self.config.activation
        ) or baseline.config.x_dim != self.config.x_dim:
            raise ValueError(f"The baseline's config {baseline.config} does not match the CVAE's {self.config}.")
        self.baseline.load_state_dict(baseline.state_dict())
        first, source = self.generation_net.body[0], baseline.net.body[0]  # Linear(D_obs + z_dim -> h1)
        first.weight.zero_()
        first.weight[:, : self.obs_dim] = source.weight
        first.bias.copy_(source.bias)
        self.generation_net.body[1:].load_state_dict(baseline.net.body[1:].state_dict())
        self.generation_net.logits.load_state_dict(baseline.net.logits.state_dict())
        return self

    def predict(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Means of p(y | x, z) for z ~ p(z | x): (num_samples, N, D_y)."""
        y_hat = self.baseline.predict(x)
        prior = dist.Normal(*self.prior_net(concat([x, y_hat])))
        z = prior.sample((num_samples,))  # (S, N, z_dim)
        return self.generation_net.mean(concat([x, z]))

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whole images (N, x_dim): the observed pixels and p(y | x, z)'s mean at z = E_q[z | x, y]."""
        z_loc = self.recognition_net(concat([x, y]))[0]
        return self.join(x, self.generation_net.mean(concat([x, z_loc])))
