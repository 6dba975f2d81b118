"""The VAE with a VampPrior (Tomczak & Welling 2018): the prior is a mixture of the guide at learned pseudo-inputs.

The model is the VAE's with one line changed, the prior of z:

    p(z) = (1/K) sum_k q(z | u_k),     u_k = hardtanh(w_k, 0, 1) in pixel range, k = 1..K

([1], eq. 9), written as ``dist.MixtureSameFamily`` of the encoder's Gaussians
at the K pseudo-inputs. The guide is the VAE's. The mixture has no
``rsample``, which training does not need: ``Trace_ELBO`` scores the model's z
at the guide's draw.

References:
    [1] J. Tomczak, M. Welling (2018), "VAE with a VampPrior", AISTATS,
        eq. (9) and section 3 (pseudo-inputs through a hardtanh, initialised
        around 0.05 with standard deviation 0.01, K = 500 on MNIST).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pplvae.models.vae import VAE, VAEConfig, check_data


@dataclass
class VampPriorConfig(VAEConfig):
    """Sizes of a :class:`VampPriorVAE`: the VAE's, and ``num_pseudo_inputs`` K (500 in [1] on MNIST)."""

    num_pseudo_inputs: int = 500

    def __post_init__(self):
        super().__post_init__()
        if self.num_pseudo_inputs < 1:
            raise ValueError(f"num_pseudo_inputs must be positive, got {self.num_pseudo_inputs}.")


class VampPriorVAE(VAE):
    """A VAE whose prior is the VampPrior p(z) = (1/K) sum_k q(z | u_k) ([1], eq. 9).

    model:  z ~ (1/K) sum_k N(z_loc(u_k), diag(z_scale(u_k)^2)),  x | z as in :class:`~pplvae.models.VAE`
    guide:  the VAE's, z | x ~ N(z_loc(x), diag(z_scale(x)^2))

    Sites, shapes and helpers as :class:`~pplvae.models.VAE`; the pseudo-inputs
    are a parameter ``pseudo_inputs`` of shape (K, x_dim) (pre-hardtanh).

    Cost: scoring z under the mixture makes a (..., K, z_dim) tensor per
    draw, 9 times the VAE's CPU time per training step at K = 500 on MNIST;
    :func:`pplvae.log_marginal_likelihood` does not see that tensor in its
    memory probe, so give it a smaller ``max_memory_bytes`` (16 MiB keeps a
    chunk's mixture near 100 MB at K = 500, z_dim = 50).

    Start: train it with the Bernoulli decoder's output bias at logit(mean
    training pixel), as :func:`pplvae.fit` does through the inherited
    :meth:`~pplvae.models.VAE.init_from_data`; in your own SVI loop call
    ``vamp.init_from_data(x_train.mean(0))`` first. From torch's default bias
    the model stays on the independent-pixel plateau: as q(z | x) stops
    depending on x, the prior, made of the same encoder, follows it, the KL
    stays near 0 at any scale of q (which drifts up to about 2), and no unit
    becomes active (5 epochs on 5,000 MNIST images, with or without a KL
    warm-up or pseudo-inputs drawn from the training images).

    Frey Face (Gaussian decoder, ``pplvae train --dataset freyface --model
    vampprior``) falls onto the same plateau at the default settings: the
    KL term is below 0.05 nats from epoch 10 of 30 and the test ELBO 565 to
    671 nats against the VAE's 713, with or without ``--kl-warmup`` 10 or 20
    or the decoder's mean started at the mean face. No remedy for it is
    known here; use the VAE on Frey Face.

    Raises:
        ValueError: from ``model``/``guide`` when x does not have shape (N, x_dim).

    Example:
        >>> vamp = VampPriorVAE(VampPriorConfig(x_dim=784, z_dim=2, num_pseudo_inputs=10))
        >>> loss = pyro.infer.Trace_ELBO().loss(vamp.model, vamp.guide, torch.zeros(3, 784))
    """

    name = "vampprior"
    config_class = VampPriorConfig

    def __init__(self, config: VampPriorConfig):
        super().__init__(config)
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(config.num_pseudo_inputs, config.x_dim))

    def prior(self) -> dist.MixtureSameFamily:
        """p(z), batch shape () and event shape (z_dim,): the guide's Gaussians at the K pseudo-inputs, equally weighted."""
        z_loc, z_scale = self.encoder(F.hardtanh(self.pseudo_inputs, 0.0, 1.0))  # (K, z_dim) each
        mixture = dist.Categorical(logits=z_loc.new_zeros(z_loc.shape[0]))
        return dist.MixtureSameFamily(mixture, dist.Normal(z_loc, z_scale).to_event(1))

    def model(self, x: torch.Tensor) -> None:
        check_data(x, self.config.x_dim, "VampPriorVAE.model")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.decoder(z), obs=x)

    def sample_images(self, num_samples: int) -> torch.Tensor:
        """Means of p(x|z) for z ~ p(z), the VampPrior: (num_samples, x_dim)."""
        return self.decode(self.prior().sample((num_samples,)))
