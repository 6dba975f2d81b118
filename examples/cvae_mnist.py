"""Class-conditional VAE on MNIST: fit, one row of samples per digit, and log p(x | y) by importance sampling.

    python examples/cvae_mnist.py --epochs 10 --out runs/mnist-cvae
    python examples/cvae_mnist.py --epochs 1 --train-size 2000 --test-size 200 --num-samples 10  # smoke test

The same model trains with ``pplvae train --model cvae`` and is scored by ``pplvae evaluate``.
"""

import argparse
from dataclasses import asdict

import pyro

from pplvae import CVAE, CVAEConfig, TrainConfig, fit, load_dataset, log_marginal_likelihood
from pplvae.cli import new_folder, positive_int
from pplvae.models import model_config
from pplvae.plots import plot_run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--num-samples", type=positive_int, default=1000, help="importance samples per test image")
    parser.add_argument("--train-size", type=positive_int)
    parser.add_argument("--test-size", type=positive_int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=new_folder, default="runs/mnist-cvae")
    args = parser.parse_args()

    data = load_dataset("mnist", args.data_dir, train_size=args.train_size, test_size=args.test_size)
    config = TrainConfig(epochs=args.epochs, device=args.device)
    pyro.set_rng_seed(config.seed)
    cvae = CVAE(CVAEConfig(x_dim=data.x_dim, z_dim=50))
    run_config = {"model": model_config(cvae), "train": asdict(config),
                  "data": {"dataset": "mnist", "train_size": args.train_size, "test_size": args.test_size}}
    metrics = fit(cvae, data, config, args.out, run_config=run_config,
                  on_epoch=lambda row: print(f"epoch {row['epoch']}: test ELBO {row['test_elbo']:.2f} nats"))
    print("pictures:", *plot_run(cvae, data.to(cvae.prior_loc.device), metrics, args.out))  # class_samples.png

    x, y = cvae.batch_args(data.x_test.to(cvae.prior_loc.device), data.y_test.to(cvae.prior_loc.device))
    estimate = log_marginal_likelihood(cvae.model, cvae.guide, x, y, num_samples=args.num_samples)
    print(estimate.to_frame().to_string(index=False))  # log p(x | y), nats per test image


if __name__ == "__main__":
    main()
