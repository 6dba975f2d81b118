"""What would remove pplvae's remaining overhead: run the Pyro program once, replay its operators.

pplvae's step runs the model and guide through Pyro's effect handlers every
step (plates, sample sites, distribution objects, generic log-densities).
For a model of static structure all that Python produces the same sequence
of torch operators each step. This experiment records that sequence once per
batch shape with ``torch.fx.experimental.proxy_tensor.make_fx`` (random draws
are recorded as operators, so the replay draws afresh), then times forward
plus backward of four losses on the same minibatches, interleaved:

- ``torch``: the hand-written loss of :mod:`benchmarks.torch_vae` (the floor);
- ``pplvae``: ``FastTrace_ELBO`` on the model and guide, eager;
- ``replayed``: the recorded operator graph, eager;
- ``compiled``: :class:`pplvae.training.CompiledLoss`, what
  ``TrainConfig(compile=True)`` (``pplvae train --compile``) trains with: the
  graph compiled by Inductor, which fuses the elementwise log-density
  arithmetic, and called without TorchDynamo; compile time is reported apart.

This script times them without an optimizer step. A
replayed graph is only valid while the model's control flow and Python
constants do not change between steps (no KL warm-up, no data-dependent
branches), which pplvae cannot check in general: ``TrainConfig`` refuses the
settings it knows to change them.

Usage::

    python -m benchmarks.trace_once --batch-size 128 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.utils.stateless import _reparametrize_module

from benchmarks.speed import draw_batches
from benchmarks.torch_vae import torch_vae_like
from pplvae import FastTrace_ELBO, VAE, VAEConfig, load_dataset
from pplvae.training import CompiledLoss, NegativeELBO


def record(vae: VAE, x: torch.Tensor):
    """The operator graph of -ELBO per datapoint for inputs shaped like ``x``; call as ``graph(state, x)``."""
    elbo = FastTrace_ELBO()

    def loss(state, x):
        with _reparametrize_module(vae, state):
            return elbo.differentiable_loss(vae.model, vae.guide, x) / x.shape[0]

    state = {**dict(vae.named_parameters()), **dict(vae.named_buffers())}
    with pyro.validation_enabled(False):
        return make_fx(loss)(state, x), state


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled loss (a minute on a CPU)")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x_train = load_dataset("mnist", args.data_dir, train_size=5000).x_train
    batches = draw_batches(x_train, args.steps, args.batch_size, torch.Generator().manual_seed(0))
    pyro.set_rng_seed(0)
    vae = VAE(VAEConfig(x_dim=x_train.shape[1]))
    twin = torch_vae_like(vae)
    graph, state = record(vae, batches[0])
    elbo = FastTrace_ELBO()
    losses = {
        "torch": twin,
        "pplvae": lambda x: elbo.differentiable_loss(vae.model, vae.guide, x) / x.shape[0],
        "replayed": lambda x: graph(state, x),
    }
    if not args.no_compile:
        compiled = CompiledLoss(NegativeELBO(vae, elbo))
        with pyro.validation_enabled(False):
            compiled(batches[0]).backward()
        print(f"recorded and compiled the loss in {compiled.compile_seconds:.0f} s")
        losses["compiled"] = compiled

    times: dict[str, list[float]] = {name: [] for name in losses}
    with pyro.validation_enabled(False):
        for repeat in range(args.repeats):
            for name, loss in losses.items():
                start = time.process_time()
                for x in batches:
                    loss(x).backward()
                times[name].append((time.process_time() - start) * 1e3 / len(batches))
    floor = times["torch"]
    print(f"forward + backward, batch {args.batch_size}, process CPU ms per step (median of {args.repeats}):")
    for name, values in times.items():
        ratio = statistics.median(v / f for v, f in zip(values, floor))
        print(f"  {name:9s} {statistics.median(values):7.2f} ms   {ratio:.2f} x torch")


if __name__ == "__main__":
    main()
