"""Sohn et al. (2015)'s MNIST quadrant experiment: the baseline and the CVAE for 1, 2 and 3 observed quadrants.

Writes the runs, ``quadrants.csv`` (-log p(y | x) of both models, nats per test
image over the unobserved pixels, beside Pyro's tutorial numbers) and one
picture per task into ``--out``. The same as ``pplvae quadrants``.

    python examples/cvae_quadrants.py --epochs 5 --out runs/quadrants
    python examples/cvae_quadrants.py --epochs 1 --train-size 2000 --test-size 200 --num-samples 10  # smoke test
"""

import argparse
from pathlib import Path

import pandas as pd

from pplvae import TrainConfig, load_dataset
from pplvae.quadrant_experiment import run_quadrant_experiment


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observed", type=int, nargs="+", default=[1, 2, 3], help="numbers of observed quadrants")
    parser.add_argument("--epochs", type=int, default=5, help="CVAE epochs (Pyro's tutorial: up to 50)")
    parser.add_argument("--baseline-epochs", type=int, help="default: --epochs")
    parser.add_argument("--num-samples", type=int, default=100, help="importance samples per test image")
    parser.add_argument("--train-size", type=int)
    parser.add_argument("--test-size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=Path("runs/quadrants"))
    args = parser.parse_args()

    data = load_dataset("mnist", args.data_dir, train_size=args.train_size, test_size=args.test_size)
    train = TrainConfig(epochs=args.epochs, seed=args.seed, device=args.device)
    table = run_quadrant_experiment(
        data, args.out, tuple(args.observed), train, baseline_epochs=args.baseline_epochs,
        num_samples=args.num_samples,
        on_epoch=lambda r: print(f"{r['observed_quadrants']} quadrant(s) {r['model']:18s} epoch {r['epoch']:3d} "
                                 f"test ELBO {r['test_elbo']:8.2f} ({r['seconds']:.0f} s)", flush=True),
    )
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 2):
        print(table)
    print(f"table: {args.out / 'quadrants.csv'}; pictures: {args.out}/quadrants_q*.png")


if __name__ == "__main__":
    main()
