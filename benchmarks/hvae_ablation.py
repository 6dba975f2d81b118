"""Why the two-layer VAE's top layer collapses: short, comparable runs of its variants.

Each variant trains from the same seed on the same MNIST subset with the same
settings (pplvae's defaults unless the variant changes them), then reports on
the test subset: the test ELBO (nats per image, one draw), the KL of each
stochastic layer (E_q[log q(z1|x) - log p(z1|z2)] and E_q[log q(z2|z1) -
log p(z2)], nats per image, from 10 draws), the active units of z1 and z2
(Burda et al. 2016's A_u = Var_x E_q[u | x] > 0.01; E_q[z2 | x] averaged over
100 draws of z1, since with few draws the noise of z1 adds to the variance over x) and, with
``--num-samples``, log p̂(x) by importance sampling. The one-layer VAE with the
same settings is the yardstick.

Usage (from the repository root)::

    python -m benchmarks.hvae_ablation --epochs 10 --train-size 10000 --test-size 2000 --threads 1

Writes ``hvae_ablation.csv`` and ``hvae_ablation.md`` under ``--out``.

References:
    [1] Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", section 5.2.
    [2] Sønderby et al. (2016), "Ladder Variational Autoencoders", section 2.3 (KL warm-up).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import pyro
import torch
from pyro import poutine

import pplvae
from benchmarks.report import machine, markdown_machine, markdown_table
from pplvae import HVAE, VAE, HVAEConfig, TrainConfig, VAEConfig, fit, load_dataset
from pplvae.active_units import active_units

#: name -> (model: "vae" | "hvae", HVAEConfig overrides, TrainConfig overrides, what it tests)
VARIANTS = {
    "vae": ("vae", {}, {}, "one stochastic layer, the yardstick"),
    "hvae": ("hvae", {}, {}, "two layers as in [1]: exp scales, torch's init"),
    "hvae-eps1e-8": ("hvae", {}, {"adam_eps": 1e-8}, "Adam eps 1e-8 (torch's default)"),
    "hvae-old-defaults": ("hvae", {"data_init": False}, {"adam_eps": 1e-8},
                          "eps 1e-8 and torch's output bias: pplvae's settings before this change"),
    "vae-old-defaults": ("vae", {"data_init": False}, {"adam_eps": 1e-8}, "the yardstick with the old settings"),
    "hvae-no-data-init": ("hvae", {"data_init": False}, {}, "torch's init of the output bias (pixels start at 1/2)"),
    "hvae-warmup": ("hvae", {}, {"kl_warmup": "half"}, "KL warm-up over half the epochs [2]"),
    "vae-warmup": ("vae", {}, {"kl_warmup": "half"}, "the yardstick with the same warm-up"),
    "hvae-softplus": ("hvae", {"top_scale": "softplus"}, {}, "softplus scales in the top layer"),
    "hvae-scale0.1": ("hvae", {"top_scale_init": 0.1}, {}, "top scales start at 0.1"),
    "hvae-skip": ("hvae", {"top_skip": True}, {}, "linear skip in the top means"),
}


@torch.no_grad()
def layer_kls(model, x: torch.Tensor, draws: int = 10) -> dict[str, float]:
    """E_q[log q(z|.) - log p(z|.)] per latent site, nats per datapoint, averaged over ``draws``."""
    totals: dict[str, float] = {}
    for _ in range(draws):
        guide = poutine.trace(model.guide).get_trace(x)
        trace = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(x)
        for name, site in guide.nodes.items():
            if site["type"] == "sample" and not site["is_observed"]:
                kl = site["fn"].log_prob(site["value"]) - trace.nodes[name]["fn"].log_prob(site["value"])
                totals[name] = totals.get(name, 0.0) + kl.mean().item() / draws
    return totals


def run_variant(name: str, data, args) -> dict:
    kind, model_overrides, train_overrides, what = VARIANTS[name]
    train = {k: (args.epochs / 2 if v == "half" else v) for k, v in train_overrides.items()}
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device="cpu", **train)
    pyro.set_rng_seed(config.seed)
    model_overrides = dict(model_overrides)
    data_init = model_overrides.pop("data_init", True)
    if kind == "vae":
        model = VAE(VAEConfig(x_dim=data.x_dim, **model_overrides))
    else:
        model = HVAE(HVAEConfig(x_dim=data.x_dim, **model_overrides))
    if not data_init:
        model.init_from_data = lambda x_mean: None  # fit then leaves torch's init of the output bias
    trajectory = []

    def track(row):  # the top layer's active units after every epoch: does it collapse, and when?
        units = active_units(model.guide, data.x_test, num_samples=10)
        trajectory.append(str(units.get("z2", units.get("z"))))
        model.train()

    start = time.perf_counter()
    metrics = fit(model, data, config, on_epoch=track if args.track else None)
    seconds = time.perf_counter() - start
    model.eval()
    pyro.set_rng_seed(args.seed + 1)
    # E_q[z2 | x] averages over draws of z1: few draws leave z1's noise in the variance over x
    units = active_units(model.guide, data.x_test, num_samples=100)
    kls = layer_kls(model, data.x_test)
    row = dict(variant=name, change=what, test_elbo=metrics["test_elbo"].iloc[-1],
               kl_z1=kls.get("z1", kls.get("z")), kl_z2=kls.get("z2"),
               active_z1=units.get("z1", units.get("z")), active_z2=units.get("z2"), train_s=seconds)
    if args.track:
        row["top_active_by_epoch"] = " ".join(trajectory)
    if args.num_samples:
        pyro.set_rng_seed(args.seed + 2)
        estimate = pplvae.log_marginal_likelihood(model.model, model.guide, data.x_test, num_samples=args.num_samples)
        row["log_px"] = estimate.log_px.double().mean().item()
    return row


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=0, help="K of a log p(x) estimate; 0: none")
    parser.add_argument("--track", action="store_true", help="count the top layer's active units every epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mnist", args.data_dir, train_size=args.train_size, test_size=args.test_size)
    rows = []
    for name in args.variants:
        rows.append(run_variant(name, data, args))
        print(pd.DataFrame(rows).to_string(index=False, float_format="%.2f"), flush=True)
        pd.DataFrame(rows).to_csv(args.out / "hvae_ablation.csv", index=False)
    frame = pd.DataFrame(rows)
    budget = (f"{args.epochs} epochs, batch {args.batch_size}, first {len(data.x_train)} training images; "
              f"{len(data.x_test)} test images")
    markdown = (f"# Two-layer VAE ablation\n\n{markdown_machine(machine(torch.device('cpu')))}\n\n"
                f"Budget per variant: {budget}.\n\n" + markdown_table(frame.round(2)))
    (args.out / "hvae_ablation.md").write_text(markdown + "\n")
    print(markdown)
    return frame


if __name__ == "__main__":
    main()
