"""The variational autoencoder of Kingma & Welling (2013) as a Pyro model/guide pair."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pplvae.networks import DECODERS, GaussianEncoder


@dataclass
class VAEConfig:
    """Sizes of a :class:`VAE`.

    Attributes:
        x_dim: pixels per (flattened) image, from the data.
        z_dim: latent dimensions.
        hidden_dims: widths of the encoder's hidden layers; the decoder mirrors them.
        activation: ``"tanh"`` (Kingma & Welling; Burda et al.), ``"relu"``, ``"softplus"`` or ``"elu"``.
        likelihood: ``"bernoulli"`` (binary pixels, logits) or ``"gaussian"``
            (per-pixel mean and scale, Kingma & Welling appendix C.2).
    """

    x_dim: int
    z_dim: int = 50
    hidden_dims: tuple[int, ...] = (200, 200)
    activation: str = "tanh"
    likelihood: str = "bernoulli"

    def __post_init__(self):
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if self.likelihood not in DECODERS:
            raise ValueError(f"Unknown likelihood {self.likelihood!r}; choose one of {sorted(DECODERS)}.")
        if min(self.x_dim, self.z_dim, *self.hidden_dims) <= 0:
            raise ValueError(f"x_dim, z_dim and hidden_dims must be positive, got {self}.")


def check_data(x: torch.Tensor, x_dim: int, who: str) -> None:
    """Raise ``ValueError`` unless ``x`` has shape (N, x_dim)."""
    if x.dim() != 2 or x.shape[1] != x_dim:
        raise ValueError(
            f"{who} expects x of shape (N, x_dim={x_dim}), got {tuple(x.shape)}; flatten images "
            f"with x.reshape(len(x), -1), or build the model with x_dim={math.prod(x.shape[1:])}."
        )


class VAE(PyroModule):
    """A VAE: model p(z) p(x|z) and guide q(z|x) (Kingma & Welling 2013, section 3 and appendix C).

    model:  z ~ N(0, I),  x | z ~ Bernoulli(logits=f(z)) or N(mu(z), sigma(z)^2)
    guide:  z | x ~ N(z_loc(x), diag(z_scale(x)^2))

    Both take x of shape (N, x_dim) with the datapoints in the plate ``"data"``;
    the sample sites are ``"z"`` (N, z_dim) and the observed ``"x"`` (N, x_dim).
    Fit with ``pyro.infer.Trace_ELBO`` (see :func:`pplvae.fit`).

    Raises:
        ValueError: from ``model``/``guide`` when x does not have shape (N, x_dim).

    Example:
        >>> vae = VAE(VAEConfig(x_dim=784, z_dim=2))
        >>> loss = pyro.infer.Trace_ELBO().loss(vae.model, vae.guide, torch.zeros(3, 784))
    """

    name = "vae"
    config_class = VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_dims
        self.encoder = GaussianEncoder(config.x_dim, config.z_dim, hidden, config.activation)
        decoder = DECODERS[config.likelihood]
        self.decoder = decoder(config.z_dim, config.x_dim, hidden[::-1], config.activation)
        self.register_buffer("prior_loc", torch.zeros(config.z_dim))
        self.register_buffer("prior_scale", torch.ones(config.z_dim))

    def model(self, x: torch.Tensor) -> None:
        check_data(x, self.config.x_dim, "VAE.model")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            pyro.sample("x", self.decoder(z), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        check_data(x, self.config.x_dim, "VAE.guide")
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))

    # Helpers for pictures and evaluation; the math is all above.

    def batch_args(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
        """The arguments of ``model``/``guide`` for a minibatch: ``(x,)``."""
        return (x,)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_loc, z_scale)`` of q(z|x), each (N, z_dim)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z), (N, x_dim): pixel probabilities or Gaussian means."""
        return self.decoder.mean(z)

    def sample_images(self, num_samples: int) -> torch.Tensor:
        """Means of p(x|z) for z ~ p(z): (num_samples, x_dim)."""
        z = dist.Normal(self.prior_loc, self.prior_scale).sample((num_samples,))
        return self.decode(z)

    def reconstruct(self, x: torch.Tensor, *args) -> torch.Tensor:
        """Mean of p(x | z = E_q[z|x]): (N, x_dim)."""
        return self.decode(self.encode(x)[0])
