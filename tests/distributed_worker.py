"""One rank of the data-parallel tests, started by ``torchrun`` from ``tests/test_distributed.py``.

Modes (the first argument):

* ``fit OUT MODEL BATCH EPOCHS [RUN_DIR [resume]]``: fit MODEL (``fixed``:
  :class:`FixedNoiseGaussian`, whose noise is a function of the datapoint's
  index, on tensors; ``fixed-dataset``: the same on a ``TensorDataset``;
  both with the first 11 datapoints as test data; ``vae``: a small VAE on
  dynamically binarized data, drawing from each rank's random stream) and,
  on rank 0, save the final weights and metrics to OUT;
* ``estimate OUT SEED``: :func:`pplvae.evaluation.sharded_log_marginal_likelihood`
  of a small VAE, rank 0 saving the per-datapoint results to OUT;
* ``cli ARGS...``: ``pplvae.cli.main(ARGS)``; with ``PPLVAE_TEST_KILL_RANK``
  and ``PPLVAE_TEST_KILL_AT_EPOCH`` set, that rank kills itself (SIGKILL)
  as that epoch starts, the stand-in for a crashed machine.

Only this file reads those environment variables; the library never does.
"""

from __future__ import annotations

import os
import signal
import sys

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.utils.data import TensorDataset

X_DIM, Z_DIM, N = 6, 2, 256


class FixedNoiseGaussian(PyroModule):
    """A linear-Gaussian VAE whose reparameterization noise is a fixed table indexed by the datapoint.

    ``guide(x, idx)`` samples z = loc(x) + scale(x) * noise[idx] as a Delta
    carrying log N(z; loc, scale): the ELBO's usual per-datapoint terms, but
    with no draw from any random generator, so a datapoint's loss is the same
    whichever rank and minibatch it lands in.
    """

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(X_DIM, 2 * Z_DIM)
        self.decoder = nn.Linear(Z_DIM, X_DIM)
        self.register_buffer("noise", torch.randn(N, Z_DIM, generator=torch.Generator().manual_seed(1)))

    def model(self, x, idx):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x, idx):
        loc, log_scale = self.encoder(x).chunk(2, dim=-1)  # (B, Z_DIM) each
        scale = log_scale.exp()
        z = loc + scale * self.noise[idx]
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(z, log_density=dist.Normal(loc, scale).log_prob(z).sum(-1), event_dim=1))


def fixed_data():
    """(x (N, X_DIM), idx (N,)): Gaussian data and each row's index."""
    x = torch.randn(N, X_DIM, generator=torch.Generator().manual_seed(2))
    return x, torch.arange(N)


def binary_images(n=N, seed=3):
    from pplvae import ImageData

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 16, generator=g)
    return ImageData("synthetic", x, None, torch.bernoulli(x[:64], generator=g), None, (4, 4), True)


def small_vae():
    from pplvae import VAE, VAEConfig

    pyro.set_rng_seed(0)
    return VAE(VAEConfig(x_dim=16, z_dim=2, hidden_dims=(8,)))


def run_fit(out, model_kind, batch_size, epochs, run_dir=None, resume=None):
    from pplvae import TrainConfig, distributed, fit

    distributed.init_from_env()
    test_data = None
    if model_kind.startswith("fixed"):
        pyro.set_rng_seed(0)
        model, data = FixedNoiseGaussian(), fixed_data()
        test_data = tuple(t[:11] for t in data)
        if model_kind == "fixed-dataset":
            data, test_data = TensorDataset(*data), TensorDataset(*test_data)
    else:
        model, data = small_vae(), binary_images()
    config = TrainConfig(epochs=int(epochs), batch_size=int(batch_size), learning_rate=0.01, device="cpu")
    metrics = fit(model, data, config, run_dir, resume=resume == "resume", test_data=test_data)
    if distributed.is_rank0():
        torch.save({"model": model.state_dict(), **{key: torch.tensor(metrics[key].to_numpy())
                                                    for key in ("train_elbo", "test_elbo") if key in metrics}}, out)
    distributed.destroy()


def run_estimate(out, seed):
    from pplvae import distributed
    from pplvae.evaluation import sharded_log_marginal_likelihood

    distributed.init_from_env()
    model = small_vae()
    x = binary_images(n=7).x_test[:7]
    result = sharded_log_marginal_likelihood(model.model, model.guide, x, num_samples=50, seed=int(seed))
    if distributed.is_rank0():
        torch.save({"log_px": result.log_px, "ess": result.ess, "elbo": result.bounds[1]}, out)
    distributed.destroy()


def run_cli(argv):
    from pplvae.cli import main
    from pplvae.training import Trainer

    kill_rank = os.environ.get("PPLVAE_TEST_KILL_RANK")
    if kill_rank is not None and os.environ["RANK"] == kill_rank:
        kill_at = int(os.environ["PPLVAE_TEST_KILL_AT_EPOCH"])
        train_epoch = Trainer.train_epoch

        def dying_train_epoch(self, *args, **kwargs):
            if self.epoch + 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return train_epoch(self, *args, **kwargs)

        Trainer.train_epoch = dying_train_epoch
    return main(argv)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "fit":
        run_fit(*rest)
    elif mode == "estimate":
        run_estimate(*rest)
    else:
        sys.exit(run_cli(rest))
