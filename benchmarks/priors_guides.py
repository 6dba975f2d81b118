"""Test log p̂(x) and active units of trained runs: the VAE against its VampPrior and IAF-guide edits.

For every run folder given, estimates log p(x) on the first ``--num-images``
test images by importance sampling with K = ``--num-samples``
(:func:`pplvae.log_marginal_likelihood`, the ELBO from the same draws beside
it) and counts the active units of the guide on the same images (Burda et al.
2016: Var_x E_q[z_u | x] > 0.01; a flow guide's mean averaged over
``--au-samples`` draws). Nats per image.

    python -m benchmarks.priors_guides runs/vae runs/vampprior runs/iaf --num-samples 1000
"""

from __future__ import annotations

import argparse

import pandas as pd
import pyro
import torch

from benchmarks.report import row_line
from pplvae import load_run, log_marginal_likelihood
from pplvae.active_units import active_units


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders written by pplvae train")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--num-images", type=int, default=1000, help="first N test images")
    parser.add_argument("--num-samples", type=int, default=1000, help="K, importance samples per image")
    parser.add_argument("--au-samples", type=int, default=100, help="guide draws per image for a flow's mean")
    parser.add_argument("--max-memory-mb", type=float, default=64, help="estimator chunk budget, MiB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="CSV path for the table")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    rows = []
    for run_dir in args.runs:
        run = load_run(run_dir, device="cpu")
        data = run.load_data(args.data_dir)
        x = data.x_test[: args.num_images]
        pyro.set_rng_seed(args.seed)
        result = log_marginal_likelihood(run.model.model, run.model.guide, x, num_samples=args.num_samples,
                                         max_memory_bytes=int(args.max_memory_mb * 2**20))
        units = active_units(run.model.guide, x, num_samples=args.au_samples)
        rows.append({"run": run_dir, "model": run.model.name, "epochs": run.config["train"]["epochs"],
                     "elbo": result.bounds[1].mean().item(), "log_px": result.log_px.mean().item(),
                     "log_px_stderr": result.stderr, "active_units": sum(units.values()),
                     "num_samples": args.num_samples, "num_images": len(x)})
        print(row_line(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    return table


if __name__ == "__main__":
    main()
