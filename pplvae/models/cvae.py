"""The class-conditional VAE: the VAE with the label y added to the decoder's and the encoder's inputs.

References:
    [1] D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling (2014),
        "Semi-Supervised Learning with Deep Generative Models", NeurIPS,
        section 3.1.2, model M2 with the label observed: p(z) p(x | y, z), q(z | x, y).
    [2] K. Sohn, H. Lee, X. Yan (2015), "Learning Structured Output
        Representation using Deep Conditional Generative Models", NeurIPS,
        section 3, with the input there being the class y and the output the image x.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch.nn import functional as F

from pplvae.models.vae import VAEConfig, check_data
from pplvae.networks import DECODERS, GaussianEncoder, concat


@dataclass
class CVAEConfig(VAEConfig):
    """Sizes of a :class:`CVAE`: those of :class:`pplvae.VAEConfig` and ``num_classes``.

    Attributes:
        num_classes: C, the number of labels (10 for MNIST); y is one-hot (N, C).
    """

    num_classes: int = 10

    def __post_init__(self):
        super().__post_init__()
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}.")


class CVAE(PyroModule):
    """A class-conditional VAE: model p(z) p(x | z, y), guide q(z | x, y) ([1] M2, [2] section 3).

    model:  z ~ N(0, I),  x | z, y ~ Bernoulli(logits=f([z, y])) or N(mu([z, y]), sigma([z, y])^2)
    guide:  z | x, y ~ N(z_loc([x, y]), diag(z_scale([x, y])^2))

    The only change from :class:`pplvae.VAE` is the extra argument ``y``, the
    one-hot label (N, num_classes), concatenated to the decoder's and the
    encoder's inputs. The label is conditioned on, not modelled: the ELBO is a
    bound on log p(x | y), nats per datapoint. Sites: ``"z"`` (N, z_dim) and
    the observed ``"x"`` (N, x_dim), in the plate ``"data"``.

    Raises:
        ValueError: from ``model``/``guide`` when x is not (N, x_dim) or y not
            (N, num_classes); from ``batch_args`` when the labels are missing.

    Example:
        >>> cvae = CVAE(CVAEConfig(x_dim=784, z_dim=2))
        >>> args = cvae.batch_args(torch.zeros(3, 784), torch.tensor([0, 1, 9]))
        >>> [a.shape for a in args]
        [torch.Size([3, 784]), torch.Size([3, 10])]
        >>> loss = pyro.infer.Trace_ELBO().loss(cvae.model, cvae.guide, *args)
    """

    name = "cvae"
    config_class = CVAEConfig

    def __init__(self, config: CVAEConfig):
        super().__init__()
        self.config = config
        hidden, num_classes = config.hidden_dims, config.num_classes
        self.encoder = GaussianEncoder(config.x_dim + num_classes, config.z_dim, hidden, config.activation)
        decoder = DECODERS[config.likelihood]
        self.decoder = decoder(config.z_dim + num_classes, config.x_dim, hidden[::-1], config.activation)
        self.register_buffer("prior_loc", torch.zeros(config.z_dim))
        self.register_buffer("prior_scale", torch.ones(config.z_dim))

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._check(x, y, "CVAE.model")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            pyro.sample("x", self.decoder(concat([z, y])), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._check(x, y, "CVAE.guide")
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(concat([x, y]))
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))

    # Helpers for pictures and evaluation; the math is all above.

    def _check(self, x: torch.Tensor, y: torch.Tensor, who: str) -> None:
        check_data(x, self.config.x_dim, who)
        if y.shape != (x.shape[0], self.config.num_classes):
            raise ValueError(
                f"{who} expects one-hot labels y of shape (N={x.shape[0]}, num_classes="
                f"{self.config.num_classes}), got {tuple(y.shape)}; use batch_args(x, labels)."
            )

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """Integer labels (N,) in [0, num_classes) as float one-hot rows (N, num_classes).

        Raises:
            ValueError: a label outside [0, num_classes).
        """
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.config.num_classes):
            raise ValueError(f"labels must lie in [0, {self.config.num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}].")
        return F.one_hot(labels.long(), self.config.num_classes).to(self.prior_loc.dtype)

    def batch_args(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
        """The arguments of ``model``/``guide`` for a minibatch: ``(x, one_hot(labels))``.

        Raises:
            ValueError: ``labels`` is None (the data set has no labels).
        """
        if labels is None:
            raise ValueError("The class-conditional VAE needs labels; this data set has none.")
        return x, self.one_hot(labels)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_loc, z_scale)`` of q(z | x, y), each (N, z_dim)."""
        return self.encoder(concat([x, y]))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z, y), (N, x_dim), for z (N, z_dim) and one-hot y (N, num_classes)."""
        return self.decoder.mean(concat([z, y]))

    def sample_images(self, num_samples: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Means of p(x | z, y) for z ~ p(z): (num_samples, x_dim).

        ``labels`` (num_samples,) default to 0, 1, ..., C-1, 0, 1, ... in turn.
        """
        if labels is None:
            labels = torch.arange(num_samples, device=self.prior_loc.device) % self.config.num_classes
        z = dist.Normal(self.prior_loc, self.prior_scale).sample((num_samples,))
        return self.decode(z, self.one_hot(labels))

    def sample_class_grid(self, num_styles: int) -> torch.Tensor:
        """One row per class, one column per z ~ p(z): (num_classes * num_styles, x_dim).

        Row c, column j is the mean of p(x | z_j, y = c): down a column the
        style z_j is held and only the class changes.
        """
        num_classes = self.config.num_classes
        z = dist.Normal(self.prior_loc, self.prior_scale).sample((num_styles,))  # (S, z_dim)
        labels = torch.arange(num_classes, device=z.device).repeat_interleave(num_styles)  # (C*S,)
        return self.decode(z.repeat(num_classes, 1), self.one_hot(labels))  # (C*S, x_dim)

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z = E_q[z | x, y], y): (N, x_dim)."""
        return self.decode(self.encode(x, y)[0], y)
