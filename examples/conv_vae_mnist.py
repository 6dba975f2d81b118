"""A convolutional VAE on MNIST images (N, 1, 28, 28): your model, your Dataset, pplvae's fit and log p(x).

    python examples/conv_vae_mnist.py --epochs 5 --num-samples 1000 --test-size 1000 --out runs/mnist-conv-vae
    python examples/conv_vae_mnist.py --epochs 1 --train-size 300 --test-size 20 --num-samples 5  # smoke test

Everything model-specific is on this page and in plain Pyro and ``torch.nn``:
the pair is a ``PyroModule`` with ``model(x)`` and ``guide(x)``, the training
data are torchvision's ``datasets.MNIST`` with a transform that binarizes each
image afresh every time it is read, and pplvae only trains it (``fit``) and
scores it (``log_marginal_likelihood``).

torchvision's items are ``(image, label)`` pairs and ``fit`` passes a tuple
item as positional arguments, so the programs are ``model(x, y=None)`` and
``guide(x, y=None)`` and ignore the label. That keeps the data set exactly as
torchvision makes it (no wrapper ``Dataset`` to read), and the same programs
take test images alone, ``model(x)``, as the estimator calls them.
"""

from __future__ import annotations

import argparse
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.utils.data import Subset
from torchvision import datasets, transforms

import pplvae
from pplvae.cli import new_folder, positive_int
from pplvae.data import Binarize
from pplvae.data.paths import candidate_dirs


class ConvVAE(PyroModule):
    """A VAE with convolutional encoder and decoder for binary images (Kingma & Welling 2013, section 3).

    model:  z ~ N(0, I),  x | z ~ Bernoulli(logits=decoder(z)), pixels independent given z
    guide:  z | x ~ N(z_loc(x), diag(z_scale(x)^2))

    The encoder halves the height and width at every convolution (kernel 4,
    stride 2, padding 1) and ends in a linear layer to ``z_loc`` and
    log ``z_scale``; the decoder mirrors it with transposed convolutions.

    Args:
        image_shape: (C, H, W) of one image, from the data; H and W must be
            divisible by 2 ** len(channels).
        z_dim: latent dimensions.
        channels: output channels of the encoder's convolutions (the decoder's, reversed).
        hidden: width of the fully connected layer between convolutions and z.

    Both programs take x of shape (N, C, H, W), binary, with the datapoints in
    the plate ``"data"``; sites ``"z"`` (N, z_dim) and the observed ``"x"``
    (N, C, H, W). The decoder accepts z with extra leading dims (K, N, z_dim),
    as :func:`pplvae.log_marginal_likelihood` draws K samples at once.

    Raises:
        ValueError: from ``__init__`` when H or W is not divisible by
            2 ** len(channels); from ``model``/``guide`` when x is not (N, C, H, W).

    Example:
        >>> vae = ConvVAE((1, 28, 28), z_dim=4, channels=(8, 16), hidden=32)
        >>> loss = pyro.infer.Trace_ELBO().loss(vae.model, vae.guide, torch.zeros(3, 1, 28, 28))
    """

    def __init__(self, image_shape: tuple[int, int, int], z_dim: int = 32, channels: tuple[int, ...] = (32, 64),
                 hidden: int = 256):
        super().__init__()
        in_channels, height, width = image_shape
        stride = 2 ** len(channels)
        if height % stride or width % stride:
            raise ValueError(f"ConvVAE halves the image {len(channels)} times: height and width must be divisible "
                             f"by {stride}, got {height}x{width}; pad the images or use fewer channels.")
        self.image_shape = tuple(image_shape)
        self.z_dim = z_dim
        inner = (channels[-1], height // stride, width // stride)  # the last feature map, (C', H', W')
        encoder: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *channels], channels):
            encoder += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        self.encoder = nn.Sequential(*encoder, nn.Flatten(), nn.Linear(math.prod(inner), hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * z_dim))
        decoder: list[nn.Module] = [nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, math.prod(inner)),
                                    nn.ReLU(), nn.Unflatten(-1, inner)]
        for c_in, c_out in zip(channels[::-1], [*channels[::-1][1:], in_channels]):
            decoder += [nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        self.decoder = nn.Sequential(*decoder[:-1])  # logits: no activation after the last layer
        self.register_buffer("prior_loc", torch.zeros(z_dim))
        self.register_buffer("prior_scale", torch.ones(z_dim))

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(z) p(x | z) with x (N, C, H, W) observed; ``y`` (a label) is ignored."""
        self._check(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))  # (N, z_dim)
            pyro.sample("x", dist.Bernoulli(logits=self.logits(z)).to_event(3), obs=x)  # (N, C, H, W)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(z | x) for x (N, C, H, W); ``y`` is ignored."""
        self._check(x)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)  # (N, z_dim) each
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of p(x | z): z (..., z_dim) -> (..., C, H, W)."""
        batch_shape = z.shape[:-1]
        logits = self.decoder(z.reshape(-1, self.z_dim))  # convolutions take one batch dim: (prod(...), C, H, W)
        return logits.reshape(*batch_shape, *self.image_shape)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"ConvVAE expects images of shape (N, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--z-dim", type=positive_int, default=32)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--num-samples", type=positive_int, default=1000, help="importance samples K per test image")
    parser.add_argument("--train-size", type=positive_int, help="train on the first N training images (a Subset)")
    parser.add_argument("--test-size", type=positive_int, help="score the first N test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=new_folder, default="runs/mnist-conv-vae")
    args = parser.parse_args()

    # Training data: a torch Dataset of (image, label) items; each read draws a fresh binarization.
    root = candidate_dirs(args.data_dir)[0][0]  # --data-dir, else $PPLVAE_DATA_DIR, else the user cache
    train = datasets.MNIST(root, train=True, download=False,
                           transform=transforms.Compose([transforms.ToTensor(), Binarize()]))  # (1, 28, 28)
    if args.train_size is not None:
        train = Subset(train, range(args.train_size))
    # Test data: the one fixed binarization of the test set that every pplvae number uses, as images.
    mnist = pplvae.load_dataset("mnist", args.data_dir, test_size=args.test_size)
    image_shape = tuple(train[0][0].shape)  # (C, H, W)
    x_test = mnist.x_test.reshape(-1, *image_shape)  # (N_test, C, H, W)

    config = pplvae.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device=args.device)
    pyro.set_rng_seed(config.seed)
    vae = ConvVAE(image_shape, z_dim=args.z_dim)
    metrics = pplvae.fit(vae, train, config, args.out, test_data=x_test,
                         on_epoch=lambda row: print(f"epoch {row['epoch']}: train ELBO {row['train_elbo']:.2f}, "
                                                    f"test ELBO {row['test_elbo']:.2f} nats ({row['seconds']:.0f} s)"))
    print(metrics.to_string(index=False))

    vae.eval()
    pyro.set_rng_seed(config.seed)
    x_test = x_test.to(vae.prior_loc.device)
    estimate = pplvae.log_marginal_likelihood(vae.model, vae.guide, x_test, num_samples=args.num_samples)
    print(estimate.to_frame().to_string(index=False))  # ELBO, IWAE bounds and log p(x), nats per test image


if __name__ == "__main__":
    main()
