"""The VAE with an inverse-autoregressive-flow guide (Kingma et al. 2016), from ``pyro.distributions.transforms``.

The guide is the VAE's with one line changed: its Gaussian is pushed through
``num_flows`` affine autoregressive transforms (MADE networks, [2]),

    z_0 ~ N(z_loc(x), diag(z_scale(x)^2)),   z_t = sigma_t(z_{t-1}) * z_{t-1} + (1 - sigma_t(z_{t-1})) * m_t(z_{t-1})

([1], eq. 14, the numerically stable gated update), each with its own random
ordering of the latent dimensions. The flows take no context from x: a
non-conditional IAF stack after the amortized Gaussian, as in Pyro's
normalizing-flow examples. The model is the VAE's. Sampling is one pass per
flow; the density of a given z (AIS from the guide, DReG) inverts each flow
with z_dim passes, the density of the guide's own draws uses the transforms'
cached inverse.

References:
    [1] D. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling
        (2016), "Improved Variational Inference with Inverse Autoregressive
        Flow", NeurIPS, eq. (10)-(14).
    [2] M. Germain, K. Gregor, I. Murray, H. Larochelle (2015), "MADE: Masked
        Autoencoder for Distribution Estimation", ICML.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T
from torch import nn

from pplvae.models.vae import VAE, VAEConfig, check_data


@dataclass
class IAFConfig(VAEConfig):
    """Sizes of an :class:`IAFVAE`: the VAE's, the number of flows and the widths of each flow's MADE."""

    num_flows: int = 2
    flow_hidden_dims: tuple[int, ...] = (200,)

    def __post_init__(self):
        super().__post_init__()
        self.flow_hidden_dims = tuple(int(h) for h in self.flow_hidden_dims)
        if self.num_flows < 1 or min(self.flow_hidden_dims, default=1) < 1:
            raise ValueError(f"num_flows and flow_hidden_dims must be positive, got {self}.")


class IAFVAE(VAE):
    """A VAE whose guide is a Gaussian followed by an inverse autoregressive flow ([1], section 4).

    model:  the VAE's, z ~ N(0, I), x | z ~ p(x | z)
    guide:  z | x ~ TransformedDistribution(N(z_loc(x), diag(z_scale(x)^2)), [IAF_1, ..., IAF_F])

    Sites, shapes and helpers as :class:`~pplvae.models.VAE`; ``encode`` gives
    the base Gaussian's (z_loc, z_scale), ``reconstruct`` decodes the flows'
    image of z_loc. The transforms are a ``nn.ModuleList`` ``flows`` so that
    their parameters train and their orderings are saved with the state dict.

    Raises:
        ValueError: from ``model``/``guide`` when x does not have shape (N, x_dim).

    Example:
        >>> iaf = IAFVAE(IAFConfig(x_dim=784, z_dim=2))
        >>> loss = pyro.infer.Trace_ELBO().loss(iaf.model, iaf.guide, torch.zeros(3, 784))
    """

    name = "iaf"
    config_class = IAFConfig

    def __init__(self, config: IAFConfig):
        super().__init__(config)
        self.flows = nn.ModuleList(
            T.affine_autoregressive(config.z_dim, hidden_dims=list(config.flow_hidden_dims), stable=True)
            for _ in range(config.num_flows)
        )

    def guide(self, x: torch.Tensor) -> None:
        check_data(x, self.config.x_dim, "IAFVAE.guide")
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            base = dist.Normal(z_loc, z_scale).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, list(self.flows)))

    def reconstruct(self, x: torch.Tensor, *args) -> torch.Tensor:
        """Mean of p(x | z) at z = the flows' image of the base mean z_loc(x): (N, x_dim)."""
        z = self.encode(x)[0]
        for flow in self.flows:
            z = flow(z)
        return self.decode(z)
