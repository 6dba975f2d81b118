"""How much does the ratio to torch.mm vary on this machine when the work does not? The same estimate, round after round.

``benchmarks/marginal_throughput.py`` reports one ratio of the decoder's
GFLOP/s to ``torch.mm``'s for one run. On a shared virtual machine the
neighbours' load changes from minute to minute, and it slows the estimate,
whose threads meet at the end of each of its many short kernels, more than
the few long kernels of ``torch.mm``. This script measures that
spread on the CPU: it scores the same MNIST test images with K samples each,
``--rounds`` times in one process, and times ``torch.mm`` on the decoder's shapes
(:class:`benchmarks.marginal_throughput.MatmulReference`) right after every
round. Every round does the same arithmetic on the same data (the draws
differ), so on a quiet, dedicated machine the rounds agree to a few percent;
the spread it reports is the machine's, not the estimator's. The weights are
untrained (the arithmetic, hence the timing, does not depend on them), as in
``benchmarks/marginal_ceiling.py``.

    python -m benchmarks.marginal_noise                   # 40 rounds of 240 images, K = 5000: about 3.5 minutes
    python -m benchmarks.marginal_noise --rounds 5 --num-examples 30

Writes one CSV row per round (``--out``) and prints the rounds and the
spread (minimum, quartiles, maximum) of the time per image and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd
import pyro
import torch

from benchmarks.marginal_ceiling import add_arguments, untrained_vae_and_images
from benchmarks.marginal_throughput import MatmulReference, Timer, decoder_flops_per_sample
from pplvae import log_marginal_likelihood


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, num_examples=240, rounds=40, rounds_help="rounds on the same images", out="marginal_noise.csv")
    return parser.parse_args(argv)


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    model, x = untrained_vae_and_images(args)
    pyro.set_rng_seed(args.seed)
    warm_up = log_marginal_likelihood(model.model, model.guide, x[:6], num_samples=args.num_samples)
    cpu = torch.device("cpu")
    reference = MatmulReference(model, warm_up.chunk_shape, cpu)
    gflop = decoder_flops_per_sample(model) * args.num_samples * len(x) / 1e9

    rows = []
    start = time.perf_counter()
    for round_ in range(args.rounds):
        started = time.perf_counter() - start
        with Timer(cpu) as timer:
            result = log_marginal_likelihood(model.model, model.guide, x, num_samples=args.num_samples)
        seconds, cpu_seconds = timer.seconds, timer.cpu_seconds
        mm_rate = reference.rate(args.mm_repeats)[0]
        rows.append({
            "round": round_,
            "started_s": started,
            "seconds": seconds,
            "ms_per_image": seconds / len(x) * 1e3,
            "cpu_ms_per_image": cpu_seconds / len(x) * 1e3,
            "decoder_gflops_per_s": gflop / seconds,
            "mm_gflops_per_s": mm_rate,
            "ratio_to_mm": gflop / seconds / mm_rate,
        })
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()), flush=True)

    table = pd.DataFrame(rows)
    table.insert(1, "threads", torch.get_num_threads())
    table.insert(2, "chunk", "x".join(map(str, result.chunk_shape)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    spread = table[["ms_per_image", "mm_gflops_per_s", "ratio_to_mm"]].describe().loc[["min", "25%", "50%", "75%", "max"]]
    print(f"{args.rounds} rounds of the same {len(x)} images, K = {args.num_samples}, {torch.get_num_threads()} threads:")
    print(spread.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"written to {args.out}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
