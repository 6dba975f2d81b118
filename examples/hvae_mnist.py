"""Two-stochastic-layer VAE (Burda et al. 2016) on MNIST: fit, log p(x) by importance sampling, active units.

    python examples/hvae_mnist.py --epochs 20 --out runs/mnist-hvae
    python examples/hvae_mnist.py --epochs 1 --train-size 2000 --test-size 200 --num-samples 10  # smoke test

The same model trains with ``pplvae train --model hvae`` and is scored by ``pplvae evaluate``.
"""

import argparse
from dataclasses import asdict

import pyro

from pplvae import HVAE, HVAEConfig, TrainConfig, fit, load_dataset, log_marginal_likelihood
from pplvae.active_units import active_units
from pplvae.cli import new_folder, positive_int
from pplvae.models import model_config
from pplvae.plots import plot_run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--num-samples", type=positive_int, default=1000, help="importance samples per test image")
    parser.add_argument("--train-size", type=positive_int)
    parser.add_argument("--test-size", type=positive_int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=new_folder, default="runs/mnist-hvae")
    args = parser.parse_args()

    data = load_dataset("mnist", args.data_dir, train_size=args.train_size, test_size=args.test_size)
    config = TrainConfig(epochs=args.epochs, device=args.device)
    pyro.set_rng_seed(config.seed)
    hvae = HVAE(HVAEConfig(x_dim=data.x_dim))  # z1 of 100 and z2 of 50 units, 200-200 and 100-100 tanh
    run_config = {"model": model_config(hvae), "train": asdict(config),
                  "data": {"dataset": "mnist", "train_size": args.train_size, "test_size": args.test_size}}
    metrics = fit(hvae, data, config, args.out, run_config=run_config,
                  on_epoch=lambda row: print(f"epoch {row['epoch']}: test ELBO {row['test_elbo']:.2f} nats"))
    print("pictures:", *plot_run(hvae, data.to(hvae.prior_loc.device), metrics, args.out))

    x_test = data.x_test.to(hvae.prior_loc.device)
    estimate = log_marginal_likelihood(hvae.model, hvae.guide, x_test, num_samples=args.num_samples)
    print(estimate.to_frame().to_string(index=False))  # ELBO, IWAE bounds and log p(x), nats per test image
    print("active units:", active_units(hvae.guide, x_test))  # Burda et al.: Var_x E_q[z_u | x] > 0.01


if __name__ == "__main__":
    main()
