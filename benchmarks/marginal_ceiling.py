"""How close could pplvae's log p(x) estimator come to torch.mm's rate? Its parts switched off one at a time.

Issue 3 sets a target of 70% of the rate ``torch.mm`` reaches on the decoder's
shapes (``benchmarks/marginal_throughput.py``). This script measures how much
of the distance to it each part of the estimate's elementwise work accounts
for: it runs the same estimate (Burda et al.'s 784-200-200-50 VAE, K samples
per MNIST test image) with these parts replaced by no-ops that keep the
tensor shapes,

    full           pplvae as it is
    -gaussian      the Gaussian log-densities log p(z) and log q(z | x) (``Normal.log_prob``)
    -bernoulli     the Bernoulli log-density of the pixels (the signed logits are still computed)
    -tanh          the decoder's and encoder's tanh activations (their sigmoid form included)
    -all three     all of the above

side by side in one process, in interleaved rounds (the fastest round of each
counts, and ``torch.mm`` is timed after every round, the fastest counting), so
that the load of a shared machine affects them alike. What is left in
"-all three" is the decoder's matmuls, the draws from q(z | x) and Pyro's
tracing, log-weight and bookkeeping costs: its ratio is the ceiling of any
speed-up of the elementwise kernels. The no-op variants give meaningless
log p(x) values; they are timing probes only. The weights are untrained (the
arithmetic, hence the timing, does not depend on them).

    python -m benchmarks.marginal_ceiling                 # 10 images, K = 5000, torch's threads
    python -m benchmarks.marginal_ceiling --threads 1

Writes one CSV row per variant (``--out``) and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from unittest import mock

import pandas as pd
import pyro
import torch
from torch.distributions import Normal as TorchNormal

import pplvae.distributions
import pplvae.networks
from benchmarks.marginal_throughput import MatmulReference, decoder_flops_per_sample
from pplvae import VAE, VAEConfig, load_dataset, log_marginal_likelihood

def _no_gaussian():
    no_op = lambda self, value: value.new_zeros(()).expand(value.shape)  # noqa: E731
    stack = contextlib.ExitStack()
    for normal in (TorchNormal, pplvae.distributions.Normal):
        stack.enter_context(mock.patch.object(normal, "log_prob", no_op))
    return stack


def _no_bernoulli():
    zeros = lambda logits: logits.new_zeros(logits.shape[:-1])  # noqa: E731
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(pplvae.distributions, "bernoulli_log_prob", lambda logits, value: zeros(logits)))
    stack.enter_context(mock.patch.object(  # binary pixels' signed form
        pplvae.distributions, "_sum_log_sigmoid_", lambda y: (zeros(y), zeros(y).bool())
    ))
    return stack


def _no_tanh():
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(pplvae.networks.Tanh, "forward", lambda self, x: x))
    stack.enter_context(mock.patch.object(pplvae.networks.MLP, "without_grad", _linear_layers_only))
    return stack


def _linear_layers_only(body):
    """The decoder's no-grad body (``MLP.without_grad``) without its sigmoid form's ``sigmoid_``: addmm only."""
    linears = [m for m in body if isinstance(m, torch.nn.Linear)]

    def forward(x):
        s = x.reshape(-1, x.shape[-1])
        for linear in linears:
            s = torch.addmm(linear.bias, s, linear.weight.t())
        return s.view(*x.shape[:-1], s.shape[-1])

    return forward


PARTS = {
    "gaussian": _no_gaussian,
    "bernoulli": _no_bernoulli,
    "tanh": _no_tanh,
}
"""Each part's no-op: a patch that keeps the shapes of what it replaces."""

VARIANTS = {
    "full": (),
    "-gaussian": ("gaussian",),
    "-bernoulli": ("bernoulli",),
    "-tanh": ("tanh",),
    "-all three": ("gaussian", "bernoulli", "tanh"),
}


def add_arguments(parser: argparse.ArgumentParser, num_examples: int, rounds: int, rounds_help: str, out: str) -> None:
    """The arguments of this script, also those of ``benchmarks/marginal_noise.py`` with its own defaults."""
    parser.add_argument("--num-samples", type=int, default=5000, help="K per image (default 5000)")
    parser.add_argument("--num-examples", type=int, default=num_examples,
                        help=f"MNIST test images (default {num_examples})")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"{rounds_help} (default {rounds})")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--mm-repeats", type=int, default=20, help="timed torch.mm repeats per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=Path(out), help="CSV to write")


def untrained_vae_and_images(args: argparse.Namespace) -> tuple[VAE, torch.Tensor]:
    """Burda et al.'s 784-200-200-50 tanh VAE, untrained (seed ``args.seed``), in eval mode, and the images to score.

    The images are the first ``args.num_examples`` of the fixed-binarized MNIST
    test set, (N, 784). Also sets torch's threads to ``args.threads`` if given.
    """
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_dataset("mnist", args.data_dir, train_size=100, test_size=args.num_examples)
    torch.manual_seed(args.seed)
    model = VAE(VAEConfig(x_dim=data.x_dim, z_dim=50, hidden_dims=(200, 200), activation="tanh")).eval()
    return model, data.x_test[: args.num_examples]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, num_examples=10, rounds=4, rounds_help="interleaved rounds; the fastest of each variant counts",
                  out="marginal_ceiling.csv")
    return parser.parse_args(argv)


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    cpu = torch.device("cpu")
    model, x = untrained_vae_and_images(args)

    def estimate(parts):
        with contextlib.ExitStack() as stack:
            for part in parts:
                stack.enter_context(PARTS[part]())
            start = time.perf_counter()
            result = log_marginal_likelihood(model.model, model.guide, x, num_samples=args.num_samples)
            return time.perf_counter() - start, result

    pyro.set_rng_seed(args.seed)
    seconds = {name: math.inf for name in VARIANTS}
    mm_rate = 0.0
    for parts in VARIANTS.values():  # warm-up
        _, result = estimate(parts)
    reference = MatmulReference(model, result.chunk_shape, cpu)
    for _ in range(args.rounds):
        for name, parts in VARIANTS.items():
            elapsed, result = estimate(parts)
            seconds[name] = min(seconds[name], elapsed)
        mm_rate = max(mm_rate, reference.rate(args.mm_repeats)[0])

    gflop = decoder_flops_per_sample(model) * args.num_samples * len(x) / 1e9
    table = pd.DataFrame([
        {
            "variant": name,
            "seconds": seconds[name],
            "samples_per_second": args.num_samples * len(x) / seconds[name],
            "decoder_gflops_per_s": gflop / seconds[name],
            "mm_gflops_per_s": mm_rate,
            "ratio_to_mm": gflop / seconds[name] / mm_rate,
            "time_saved_share": 1 - seconds[name] / seconds["full"],
        }
        for name in VARIANTS
    ])
    table.insert(1, "threads", torch.get_num_threads())
    table.insert(2, "chunk", "x".join(map(str, result.chunk_shape)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written to {args.out}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
