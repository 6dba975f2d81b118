"""Train a VAE on binarized MNIST: a Pyro model/guide pair fitted by SVI with Trace_ELBO.

    python examples/vae_mnist.py --epochs 10 --z-dim 2 --out runs/example-mnist

The model and guide are written out below so the math is on the page; the
library's ``pplvae.VAE`` is the same pair with configurable sizes.
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

import pplvae
from pplvae.cli import positive_int
from pplvae.networks import BernoulliDecoder, GaussianEncoder
from pplvae.plots import plot_run


class MnistVAE(PyroModule):
    """p(z) = N(0, I), p(x|z) = Bernoulli(decoder(z)); q(z|x) = N(encoder(x))."""

    name = "vae"

    def __init__(self, x_dim, z_dim, hidden):
        super().__init__()
        self.config = pplvae.VAEConfig(x_dim=x_dim, z_dim=z_dim, hidden_dims=(hidden,))
        self.encoder = GaussianEncoder(x_dim, z_dim, [hidden])
        self.decoder = BernoulliDecoder(z_dim, x_dim, [hidden])
        self.register_buffer("prior_loc", torch.zeros(z_dim))
        self.register_buffer("prior_scale", torch.ones(z_dim))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            pyro.sample("x", self.decoder(z), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))

    # What the trainer and the pictures need beyond the math:
    batch_args = pplvae.VAE.batch_args
    encode = pplvae.VAE.encode
    decode = pplvae.VAE.decode
    sample_images = pplvae.VAE.sample_images
    reconstruct = pplvae.VAE.reconstruct


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--z-dim", type=positive_int, default=2)
    parser.add_argument("--hidden", type=positive_int, default=400)
    parser.add_argument("--train-size", type=positive_int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="runs/example-mnist")
    args = parser.parse_args()

    data = pplvae.load_dataset("mnist", args.data_dir, train_size=args.train_size)
    config = pplvae.TrainConfig(epochs=args.epochs, device=args.device)
    pyro.set_rng_seed(config.seed)
    vae = MnistVAE(data.x_dim, args.z_dim, args.hidden)
    metrics = pplvae.fit(vae, data, config, progress=True)
    print(metrics.to_string(index=False))
    plot_run(vae, data.to(vae.prior_loc.device), metrics, args.out)
    print(f"test ELBO {metrics.test_elbo.iloc[-1]:.2f} nats per datapoint; pictures in {args.out}")


if __name__ == "__main__":
    main()
