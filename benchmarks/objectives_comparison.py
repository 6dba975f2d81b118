"""Compare training objectives on MNIST at an equal budget.

Trains the same VAE (same architecture, seed, initial weights, epochs, batch
size and data) with four objectives: the plain ELBO, beta-VAE (beta = 4),
MMD-VAE and IWAE (K = 5), then scores every model with the same estimators:

* ``test_elbo``, ``test_reconstruction``, ``test_kl``: E_q log p(x|z) (one
  draw) and the closed-form KL(q(z|x) || p(z)) on the whole test set,
  nats per datapoint (``make_objective("elbo-analytic").loss_terms``);
* ``log_px``: the importance-sampled log p̂(x) of
  :func:`pplvae.log_marginal_likelihood` (Burda et al. 2016, eq. 8)
  with ``--num-samples`` draws from q(z|x) per datapoint on the first
  ``--eval-size`` test images, nats per datapoint, with its standard error
  over datapoints, the mean and smallest effective sample size, and the
  largest Pareto k-hat of the importance weights and the share of images
  whose k-hat is above 0.7 (where the estimate is unreliable);
* ``active_units``: latent dimensions u with Var_x(E_q[z_u|x]) > 0.01 over
  the test set (Burda et al. 2016, section 5.2; :func:`pplvae.active_units.active_units`).

Writes ``comparison.csv`` (one row per objective), ``samples.png`` (64 prior
samples per model as 8x8 grids side by side, in the CSV's row order), and
each run's ``metrics.csv`` and ``elbo.png`` under ``--out``.

    python -m benchmarks.objectives_comparison --data-dir ../shared/data --epochs 3
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyro
import torch
from torchvision.utils import make_grid, save_image

import pplvae
from pplvae import VAE, TrainConfig, VAEConfig, fit, load_dataset, make_objective
from pplvae.active_units import active_units
from pplvae.plots import plot_elbo_curves


def objectives(args) -> dict[str, dict]:
    return {
        "vae": dict(objective="elbo"),
        f"beta-vae (beta={args.beta:g})": dict(objective="elbo", beta=args.beta),
        f"mmd-vae (lambda={args.mmd_weight:g}, {args.kernel})": dict(
            objective="mmd", mmd_weight=args.mmd_weight, kernel=args.kernel),
        f"iwae (K={args.iwae_k})": dict(objective="iwae", num_particles=args.iwae_k),
    }


def chunks(x: torch.Tensor, size: int):
    for start in range(0, len(x), size):
        yield x[start : start + size]


@torch.no_grad()
def log_px(model, x: torch.Tensor, num_samples: int) -> dict:
    """:func:`pplvae.log_marginal_likelihood` on ``x``: mean log p̂(x) and its standard error (nats per
    datapoint), the effective sample size, the largest Pareto k-hat and the share
    of datapoints whose k-hat exceeds 0.7 (Vehtari et al.'s reliability threshold)."""
    result = pplvae.log_marginal_likelihood(model.model, model.guide, x, num_samples=num_samples)
    row = result.to_frame().iloc[0]
    k_hat = result.pareto_k[~torch.isnan(result.pareto_k)]  # (N,) where defined
    return {**{key: row[key] for key in ("log_px", "log_px_stderr", "ess_mean", "ess_min", "pareto_k_max")},
            "pareto_k_share_above_0.7": (k_hat > 0.7).double().mean().item() if k_hat.numel() else float("nan")}


@torch.no_grad()
def evaluate(model, data, args) -> dict:
    start = time.perf_counter()
    model.eval()
    analytic = make_objective("elbo-analytic")
    sums = {"reconstruction": 0.0, "kl": 0.0}
    for x in chunks(data.x_test, 1000):
        terms = analytic.loss_terms(model.model, model.guide, x)
        for key in sums:
            sums[key] += terms[key].item()
    n = len(data.x_test)
    importance = log_px(model, data.x_test[: args.eval_size], args.num_samples)
    return {
        "test_elbo": (sums["reconstruction"] - sums["kl"]) / n,
        "test_reconstruction": sums["reconstruction"] / n,
        "test_kl": sums["kl"] / n,
        **importance,
        "active_units": active_units(model.guide, data.x_test, num_samples=1)["z"],  # E_q[z|x] = z_loc, exact
        "eval_seconds": time.perf_counter() - start,
        "num_samples": args.num_samples,
        "eval_size": min(args.eval_size, n),
    }


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw")
    parser.add_argument("--out", type=Path, default=Path("runs/objectives-comparison"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-size", type=int, default=None, help="first N training images (default: all)")
    parser.add_argument("--test-size", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--z-dim", type=int, default=50)
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[200, 200])
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--mmd-weight", type=float, default=1000.0)
    parser.add_argument("--kernel", choices=["gaussian", "imq"], default="gaussian")
    parser.add_argument("--iwae-k", type=int, default=5)
    parser.add_argument("--num-samples", type=int, default=500, help="importance samples for log p̂(x)")
    parser.add_argument("--eval-size", type=int, default=1000, help="test images scored by log p̂(x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a shared 2-core machine)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mnist", args.data_dir, train_size=args.train_size, test_size=args.test_size)
    rows, grids = [], []
    total_start = time.perf_counter()
    for name, options in objectives(args).items():
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                             seed=args.seed, device="cpu", **options)
        pyro.set_rng_seed(args.seed)  # the same initial weights for every objective
        model = VAE(VAEConfig(x_dim=data.x_dim, z_dim=args.z_dim, hidden_dims=tuple(args.hidden_dims)))
        run_dir = args.out / name.split(" ")[0]
        start = time.perf_counter()
        metrics = fit(model, data, config, run_dir=run_dir)  # FileExistsError if --out holds an earlier run
        train_seconds = time.perf_counter() - start
        plot_elbo_curves(metrics, run_dir / "elbo.png")
        pyro.set_rng_seed(args.seed + 1)
        row = {"objective": name, "beta": config.beta, "num_particles": config.num_particles,
               "mmd_weight": config.mmd_weight if config.objective == "mmd" else None,
               "kernel": config.kernel if config.objective == "mmd" else None, "epochs": args.epochs,
               "batch_size": args.batch_size, "train_size": len(data.x_train),
               "train_seconds": train_seconds, **evaluate(model, data, args)}
        rows.append(row)
        print(f"{name}: ELBO {row['test_elbo']:.2f}, log p(x) {row['log_px']:.2f}, KL {row['test_kl']:.2f}, "
              f"active units {row['active_units']} ({train_seconds:.0f} s training)", flush=True)
        with torch.no_grad():
            pyro.set_rng_seed(args.seed + 2)  # the same prior draws for every model
            images = model.sample_images(64).reshape(-1, 1, *data.image_shape)
        grids.append(make_grid(images, nrow=8, padding=1, pad_value=1.0))
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "comparison.csv", index=False)
    gap = torch.ones(grids[0].shape[0], grids[0].shape[1], 8)
    save_image(torch.cat([g if i == 0 else torch.cat([gap, g], dim=2) for i, g in enumerate(grids)], dim=2),
               args.out / "samples.png")
    print(f"total {time.perf_counter() - total_start:.0f} s on {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"wrote {args.out / 'comparison.csv'} and {args.out / 'samples.png'}")
    return table


if __name__ == "__main__":
    main()
