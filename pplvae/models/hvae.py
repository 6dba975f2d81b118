"""A VAE with two stochastic layers, z2 -> z1 -> x, as in Burda, Grosse & Salakhutdinov (2016).

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov (2016), "Importance Weighted
        Autoencoders", ICLR, section 5 and appendix: two stochastic layers of
        100 and 50 units, deterministic layers of 200-200 and 100-100 tanh units,
        the generative network mirroring the recognition network.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pplvae.models.vae import VAE, check_data
from pplvae.networks import DECODERS, GaussianEncoder


@dataclass
class HVAEConfig:
    """Sizes of an :class:`HVAE` (defaults: Burda et al. 2016's two-layer MNIST model).

    Attributes:
        x_dim: pixels per (flattened) image, from the data.
        z_dim: units of the top stochastic layer z2 (50).
        hidden_dims: widths of the networks between x and z1 (200, 200); the
            decoder p(x | z1) mirrors q(z1 | x).
        z1_dim: units of the lower stochastic layer z1 (100).
        top_hidden_dims: widths of the networks between z1 and z2 (100, 100);
            p(z1 | z2) mirrors q(z2 | z1).
        activation: as for :class:`pplvae.VAEConfig` (``"tanh"`` in [1]).
        likelihood: ``"bernoulli"`` or ``"gaussian"``.
    """

    x_dim: int
    z_dim: int = 50
    hidden_dims: tuple[int, ...] = (200, 200)
    z1_dim: int = 100
    top_hidden_dims: tuple[int, ...] = (100, 100)
    activation: str = "tanh"
    likelihood: str = "bernoulli"

    def __post_init__(self):
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        self.top_hidden_dims = tuple(int(h) for h in self.top_hidden_dims)
        if self.likelihood not in DECODERS:
            raise ValueError(f"Unknown likelihood {self.likelihood!r}; choose one of {sorted(DECODERS)}.")
        if min(self.x_dim, self.z_dim, self.z1_dim, *self.hidden_dims, *self.top_hidden_dims) <= 0:
            raise ValueError(f"x_dim, z_dim, z1_dim and the hidden widths must be positive, got {self}.")


class HVAE(PyroModule):
    """Two stochastic layers: model p(z2) p(z1 | z2) p(x | z1), guide q(z1 | x) q(z2 | z1) ([1], section 5).

    model:  z2 ~ N(0, I),  z1 | z2 ~ N(mu(z2), diag(sigma(z2)^2)),  x | z1 ~ Bernoulli(logits=f(z1))
    guide:  z1 | x ~ N(z1_loc(x), diag(z1_scale(x)^2)),  z2 | z1 ~ N(z2_loc(z1), diag(z2_scale(z1)^2))

    The change from :class:`pplvae.VAE`: one more latent site, whose prior is
    a network of the site above it, and a guide that samples the sites bottom
    up. Sites, all in the plate ``"data"``: ``"z2"`` (N, z_dim), ``"z1"``
    (N, z1_dim), the observed ``"x"`` (N, x_dim). The ELBO is a bound on
    log p(x), nats per datapoint, as for the VAE.

    Raises:
        ValueError: from ``model``/``guide`` when x does not have shape (N, x_dim).

    Example:
        >>> hvae = HVAE(HVAEConfig(x_dim=784))
        >>> loss = pyro.infer.Trace_ELBO().loss(hvae.model, hvae.guide, torch.zeros(3, 784))
    """

    name = "hvae"
    config_class = HVAEConfig

    def __init__(self, config: HVAEConfig):
        super().__init__()
        self.config = config
        hidden, top_hidden, act = config.hidden_dims, config.top_hidden_dims, config.activation
        self.encoder_z1 = GaussianEncoder(config.x_dim, config.z1_dim, hidden, act)  # q(z1 | x)
        self.encoder_z2 = GaussianEncoder(config.z1_dim, config.z_dim, top_hidden, act)  # q(z2 | z1)
        self.prior_z1 = GaussianEncoder(config.z_dim, config.z1_dim, top_hidden[::-1], act)  # p(z1 | z2)
        self.decoder = DECODERS[config.likelihood](config.z1_dim, config.x_dim, hidden[::-1], act)  # p(x | z1)
        self.register_buffer("prior_loc", torch.zeros(config.z_dim))
        self.register_buffer("prior_scale", torch.ones(config.z_dim))

    def model(self, x: torch.Tensor) -> None:
        check_data(x, self.config.x_dim, "HVAE.model")
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(*self.prior_z1(z2)).to_event(1))
            pyro.sample("x", self.decoder(z1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        check_data(x, self.config.x_dim, "HVAE.guide")
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(*self.encoder_z1(x)).to_event(1))
            pyro.sample("z2", dist.Normal(*self.encoder_z2(z1)).to_event(1))

    # Helpers for pictures and evaluation; the math is all above.

    batch_args = VAE.batch_args  # (x,): the labels are not used
    reconstruct = VAE.reconstruct  # decode(E_q[z1 | x])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z1_loc, z1_scale)`` of q(z1 | x), each (N, z1_dim)."""
        return self.encoder_z1(x)

    def decode(self, z1: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z1), (N, x_dim)."""
        return self.decoder.mean(z1)

    def sample_images(self, num_samples: int) -> torch.Tensor:
        """Means of p(x | z1) for z2 ~ p(z2), z1 ~ p(z1 | z2): (num_samples, x_dim)."""
        z2 = dist.Normal(self.prior_loc, self.prior_scale).sample((num_samples,))
        z1 = dist.Normal(*self.prior_z1(z2)).sample()
        return self.decode(z1)
