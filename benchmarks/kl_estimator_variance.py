"""Sampled vs analytic KL: the spread of the ELBO estimate and of its gradient.

For a trained run, draws ``--draws`` independent one-sample ELBO estimates on
a fixed minibatch of test images with ``Trace_ELBO`` (KL from the draw,
``--objective elbo``) and ``TraceMeanField_ELBO`` (closed-form KL,
``--objective elbo-analytic``), and reports, per datapoint in nats, their
mean with its standard error, the standard deviation of one estimate, and the
total variance (trace of the covariance) of the gradient with respect to the
encoder's parameters.

    python -m benchmarks.kl_estimator_variance runs/objectives-comparison/vae --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import math

import pandas as pd
import pyro
import torch

from pplvae import load_dataset, load_run, make_objective


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder written by pplvae train (a VAE on MNIST)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=128, help="test images in the fixed minibatch")
    parser.add_argument("--draws", type=int, default=500, help="estimates of the ELBO per objective")
    parser.add_argument("--gradient-draws", type=int, default=100, help="gradient estimates per objective")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    vae = load_run(args.run, device="cpu").model
    x = load_dataset("mnist", args.data_dir, test_size=args.batch_size).x_test  # (B, x_dim), fixed binarization
    encoder = list(vae.encoder.parameters())
    rows = []
    for name in ("elbo", "elbo-analytic"):
        pyro.set_rng_seed(args.seed)
        objective = make_objective(name)

        def elbo():
            return -objective.differentiable_loss(vae.model, vae.guide, x) / len(x)  # nats per datapoint

        with torch.no_grad():
            values = torch.stack([elbo() for _ in range(args.draws)])  # (draws,)
        grads = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(elbo(), encoder)])
                             for _ in range(args.gradient_draws)])  # (gradient_draws, num_encoder_params)
        rows.append({"objective": name, "elbo_mean": values.mean().item(),
                     "elbo_stderr": values.std().item() / math.sqrt(args.draws),
                     "elbo_std_one_draw": values.std().item(),
                     "encoder_grad_total_variance": grads.var(dim=0).sum().item()})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
