"""BDMC brackets of log p(x) on data simulated from a trained model, for several numbers of AIS steps.

For a trained run, simulates ``--num-images`` pairs (z, x) from the model and
runs :func:`pplvae.bidirectional_monte_carlo` (forward AIS from the guide and
reverse AIS from z) with every T in ``--steps``; reports, in nats per image,
the mean lower and upper bounds, the mean width of the bracket and the wall
time; with ``--is-samples K`` also the importance-sampling estimate from the
guide on the same simulated images (``is_log_px``). The width bounds how far
AIS with that T is from log p(x) on data like the model's own, and the gap
from IS to the bracket shows how far IS is (Grosse et al. 2015; Wu et al. 2017).

    python -m benchmarks.bdmc_bracket runs/mnist-vae --steps 10 100 1000 --num-chains 4
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import pyro
import torch

from benchmarks.report import row_line
from pplvae import bidirectional_monte_carlo, load_run, log_marginal_likelihood


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder written by pplvae train")
    parser.add_argument("--num-images", type=int, default=100, help="images simulated from the model")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100, 1000], metavar="T")
    parser.add_argument("--num-chains", type=int, default=4, metavar="C")
    parser.add_argument("--initial", choices=("guide", "prior"), default="guide")
    parser.add_argument("--is-samples", type=int, default=0, metavar="K",
                        help="also estimate log p(x) of the simulated images by IS with K samples (0: no)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="CSV path for the table")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    vae = load_run(args.run, device="cpu").model
    template = torch.zeros(args.num_images, vae.config.x_dim)  # shapes only: the model simulates x
    rows = []
    for num_steps in args.steps:
        pyro.set_rng_seed(args.seed)  # the same simulated images for every T
        start = time.perf_counter()
        bracket = bidirectional_monte_carlo(vae.model, vae.guide, *vae.batch_args(template), num_steps=num_steps,
                                            num_chains=args.num_chains, initial=args.initial)
        rows.append({"num_steps": num_steps, "num_chains": args.num_chains, "num_images": args.num_images,
                     "lower": bracket.lower.mean().item(), "upper": bracket.upper.mean().item(),
                     "width": bracket.width.mean().item(), "seconds": time.perf_counter() - start})
        if args.is_samples:
            estimate = log_marginal_likelihood(vae.model, vae.guide, *vae.batch_args(bracket.data),
                                               num_samples=args.is_samples)
            rows[-1]["is_log_px"] = estimate.log_px.mean().item()
        print(row_line(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    return table


if __name__ == "__main__":
    main()
