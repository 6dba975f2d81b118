"""Accuracy: pplvae against hand-written PyTorch on one estimator, and against the papers' numbers.

1. **Agreement** (MNIST, dynamically binarized). The pplvae VAE and the
   hand-written :class:`benchmarks.torch_vae.TorchVAE` start from the same
   weights, see the same minibatches in the same order (one shared generator
   draws the permutation and the binarization), draw their noise from the same
   seed and use the same Adam, and are trained with the same schedule; both
   are then scored by the same estimator, ``pplvae.log_marginal_likelihood``
   with K importance samples, on the same (fixed-binarized) test images. Their
   mean test log p̂(x) must agree within ``--tolerance`` nats (0.3).
2. **Papers.** pplvae's own numbers next to Burda et al. (2016), Table 1
   (MNIST, K = 5000 estimate of the test NLL, 3280 epochs at batch 20), with
   the budget that produced them; and the Frey Face ELBO and log p̂(x) of
   Kingma & Welling (2013)'s Gaussian-decoder VAE with 200 hidden units.

The schedule is arguments. ``--schedule burda`` is Burda et al.'s: stage i =
0, 1, ... runs 3^i epochs at learning rate 1e-3 * 10^(-i/7); ``--stages 8`` is
their full 3280 epochs (:func:`pplvae.schedules.burda_factor`).
``--schedule constant`` runs ``--epochs`` at ``--lr``. Both contenders use
pplvae's default training settings, which are Burda et al.'s: Adam betas
(0.9, 0.999), eps ``--adam-eps`` (1e-4), and the decoder's output bias
started at the logit of the mean training pixel (clamped to [1e-3, 1 - 1e-3]),
set by pplvae's ``init_from_data`` and, independently, by the hand-written
:meth:`benchmarks.torch_vae.TorchVAE.init_output_bias`; the two must agree
exactly. ``--no-data-init`` leaves the bias at torch's default init.

Usage (from the repository root)::

    python -m benchmarks.quality                                  # full protocol, hours on a GPU
    python -m benchmarks.quality --schedule constant --epochs 5 --batch-size 100 \\
        --num-samples 1000 --test-size 2000 --freyface-epochs 50   # minutes on a CPU

Writes ``quality.csv`` (one row per trained model and estimate, with its
budget), ``quality.md`` (the tables, the machine and the command) and
``quality.png`` (training curves) under ``--out`` (default ``benchmarks/results``).

References:
    [1] Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", Table 1.
    [2] Kingma & Welling (2013), "Auto-Encoding Variational Bayes", section 5 and appendix C.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd
import pyro
import torch

import pplvae
from benchmarks.report import machine, markdown_machine, markdown_table, parsed_device
from benchmarks.torch_vae import load_into, make_step, torch_vae_like
from pplvae import ImageData, TrainConfig, Trainer, VAE, VAEConfig, load_dataset
from pplvae.schedules import burda_factor, burda_epochs
from pplvae.training import resolve_device

#: Burda et al. (2016), Table 1, MNIST: test NLL (nats), K = 5000, 3280 epochs at batch 20.
BURDA_2016 = pd.DataFrame([
    ("VAE, 1 stochastic layer (784-200-200-50)", 86.76),
    ("IWAE k=50, 1 stochastic layer", 84.78),
    ("VAE, 2 stochastic layers", 85.33),
    ("IWAE k=50, 2 stochastic layers", 82.90),
], columns=["model", "test NLL"])
BURDA_BUDGET = "3280 epochs, batch 20, lr 1e-3 * 10^(-i/7) for 3^i epochs (i < 8), Adam eps 1e-4, K=5000"


def schedule(args) -> list[tuple[int, float]]:
    """(epochs, learning rate) of each stage."""
    if args.schedule == "burda":
        return [(3**i, args.lr * burda_factor(burda_epochs(i))) for i in range(args.stages)]
    return [(args.epochs, args.lr)]


def describe(stages: list[tuple[int, float]], batch_size: int) -> str:
    epochs = sum(e for e, _ in stages)
    rates = ", ".join(f"{e}@{lr:.2g}" for e, lr in stages)
    return f"{epochs} epochs, batch {batch_size}, lr {rates}"


def train(step, set_lr, data: ImageData, stages, batch_size: int, seed: int, curve: list, label: str) -> float:
    """Run ``step(x)`` over the stages' epochs; the data order comes from ``seed``. Returns seconds."""
    generator = torch.Generator(device=data.device).manual_seed(seed)
    pyro.set_rng_seed(seed + 1)  # the noise of the reparameterization
    start, epoch = time.perf_counter(), 0
    for epochs, learning_rate in stages:
        set_lr(learning_rate)
        for _ in range(epochs):
            total = torch.zeros((), device=data.device)
            for x, _ in data.train_batches(batch_size, generator):
                total += step(x) * x.shape[0]
            epoch += 1
            curve.append(dict(model=label, epoch=epoch, train_elbo=-total.item() / data.x_train.shape[0]))
    return time.perf_counter() - start


def train_pplvae(vae: VAE, data: ImageData, stages, args, curve: list, label: str) -> tuple[Trainer, float]:
    """pplvae's trainer (``Trainer.step``, default objective and Adam), validation as ``fit`` sets it."""
    trainer = Trainer(vae, TrainConfig(batch_size=args.batch_size, learning_rate=stages[0][1],
                                       adam_eps=args.adam_eps, seed=args.seed, device=args.device))

    def set_lr(learning_rate):
        for group in trainer.optimizer.param_groups:
            group["lr"] = learning_rate

    with pyro.validation_enabled(trainer.config.validate):
        seconds = train(trainer.step, set_lr, data, stages, args.batch_size, args.seed, curve, label)
    return trainer, seconds


def train_torch(twin, optimizer, data: ImageData, stages, args, curve: list) -> float:
    """The hand-written loop: zero_grad, forward, backward, step."""

    def set_lr(learning_rate):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate

    return train(make_step(twin, optimizer), set_lr, data, stages, args.batch_size, args.seed, curve,
                 "hand-written PyTorch")


def evaluate(vae: VAE, data: ImageData, args) -> dict:
    """Test ELBO (one draw per image) and mean test log p̂(x) with K samples, nats per image."""
    vae.eval()
    trainer = Trainer(vae, TrainConfig(device=args.device, eval_batch_size=500))
    pyro.set_rng_seed(args.seed + 2)
    with pyro.validation_enabled(False):
        row = {"test ELBO": trainer.evaluate(data)}
    if args.num_samples:
        pyro.set_rng_seed(args.seed + 3)
        estimate = pplvae.log_marginal_likelihood(vae.model, vae.guide, data.x_test, num_samples=args.num_samples)
        log_px = estimate.log_px.double()
        row.update({"test log p(x)": log_px.mean().item(),
                    "stderr": (log_px.std() / math.sqrt(len(log_px))).item(), "_log_px": log_px.cpu()})
    return row


def mnist_rows(args, curve: list) -> tuple[list[dict], dict | None]:
    """Train pplvae (and its hand-written twin) on MNIST; rows for the tables and the agreement."""
    data = load_dataset("mnist", args.data_dir, train_size=args.train_size, test_size=args.test_size,
                        device=resolve_device(args.device))
    stages = schedule(args)
    budget = describe(stages, args.batch_size)
    pyro.set_rng_seed(args.seed)
    vae = VAE(VAEConfig(x_dim=data.x_dim, z_dim=50, hidden_dims=(200, 200), activation="tanh"))
    twin = torch_vae_like(vae)  # the same initial weights, before any training
    if not args.no_data_init:
        x_mean = data.x_train.mean(0)
        vae.init_from_data(x_mean)  # pplvae's hook, as fit calls it
        twin.init_output_bias(x_mean)  # the hand-written version
        if not torch.allclose(vae.decoder.logits.bias, twin.decoder.logits.bias, rtol=0, atol=1e-5):
            raise AssertionError("pplvae's and the hand-written output-bias initializations differ")
        twin.decoder.logits.bias.data.copy_(vae.decoder.logits.bias)  # equal to the last bit: a paired run
    trainer, seconds = train_pplvae(vae, data, stages, args, curve, "pplvae")
    settings = f"Adam eps {args.adam_eps:g}" + ("" if args.no_data_init else ", output bias logit(mean pixel)")
    common = dict(dataset="mnist", net="784-200-200-50 tanh, Bernoulli", budget=budget, settings=settings,
                  K=args.num_samples, test_images=data.x_test.shape[0])
    rows = [dict(model="pplvae", **common, wall_s=seconds, **evaluate(vae, data, args))]
    if args.no_agreement:
        return rows, None

    twin = twin.to(trainer.device)
    optimizer = torch.optim.Adam(twin.parameters(), lr=stages[0][1], eps=args.adam_eps,
                                 fused=trainer.optimizer.defaults.get("fused"))
    seconds = train_torch(twin, optimizer, data, stages, args, curve)
    scored = VAE(vae.config).to(trainer.device)
    load_into(scored, twin)
    rows.append(dict(model="hand-written PyTorch", **common, wall_s=seconds, **evaluate(scored, data, args)))
    agreement = None
    if args.num_samples:
        difference = rows[0]["_log_px"] - rows[1]["_log_px"]  # (N,) paired by test image
        agreement = dict(difference=difference.mean().item(),
                         stderr=(difference.std() / math.sqrt(len(difference))).item())
        agreement["agree"] = abs(agreement["difference"]) <= args.tolerance
    return rows, agreement


def freyface_rows(args, curve: list) -> list[dict]:
    """Kingma & Welling's Frey Face VAE: 200 tanh hidden units, Gaussian decoder."""
    data = load_dataset("freyface", args.data_dir, device=resolve_device(args.device))
    stages = [(args.freyface_epochs, args.freyface_lr)]
    pyro.set_rng_seed(args.seed)
    vae = VAE(VAEConfig(x_dim=data.x_dim, z_dim=args.freyface_z_dim, hidden_dims=(200,),
                        activation="tanh", likelihood="gaussian"))
    frey = argparse.Namespace(**{**vars(args), "batch_size": args.freyface_batch_size})
    trainer, seconds = train_pplvae(vae, data, stages, frey, curve, "pplvae, Frey Face")
    row = dict(model="pplvae", dataset="freyface",
               net=f"560-200-{args.freyface_z_dim} tanh, Gaussian",
               budget=describe(stages, args.freyface_batch_size), K=args.num_samples,
               test_images=data.x_test.shape[0], wall_s=seconds, train_ELBO=curve[-1]["train_elbo"])
    row.update(evaluate(vae, data, args))
    return [row]


def plot(curve: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, frey in zip(axes, (False, True)):
        part = curve[curve.model.str.contains("Frey") == frey]
        for model, rows in part.groupby("model", sort=False):
            ax.plot(rows.epoch, rows.train_elbo, marker=".", label=model)
        ax.set_xlabel("epoch")
        ax.set_ylabel("train ELBO (nats per image)")
        ax.set_title("Frey Face" if frey else "MNIST, same weights, data and noise")
        if len(part):
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(rows: list[dict], agreement: dict | None, args, info: dict) -> str:
    frame = pd.DataFrame(rows).drop(columns=["_log_px"], errors="ignore")
    parts = [f"# Accuracy\n\n{markdown_machine(info)}\n"]
    mnist = frame[frame.dataset == "mnist"]
    if len(mnist):
        columns = [c for c in ("model", "budget", "settings", "wall_s", "K", "test_images", "test ELBO",
                               "test log p(x)", "stderr") if c in mnist]
        parts.append("## MNIST: pplvae and hand-written PyTorch, same weights, data order and noise\n\n"
                     + markdown_table(mnist[columns]))
        if agreement is not None:
            verdict = "agree" if agreement["agree"] else "DISAGREE"
            parts.append(f"Mean paired difference of test log p̂(x), pplvae minus PyTorch: "
                         f"{agreement['difference']:+.2g} ± {agreement['stderr']:.2g} nats (stderr over "
                         f"test images): they {verdict} within {args.tolerance} nats. Wall times here are "
                         f"not interleaved and not a speed comparison (see benchmarks/speed.py).")
        ours = mnist[mnist.model == "pplvae"]
        if "test log p(x)" in ours:
            paper = BURDA_2016.assign(budget=BURDA_BUDGET, source="Burda et al. 2016, Table 1")
            mine = pd.DataFrame([{"model": "pplvae VAE, 1 stochastic layer (784-200-200-50)",
                                  "test NLL": -ours["test log p(x)"].iloc[0],
                                  "budget": f"{ours.budget.iloc[0]}, K={args.num_samples}, "
                                            f"{ours.test_images.iloc[0]} test images, "
                                            f"{ours.wall_s.iloc[0]:.0f} s",
                                  "source": "this run"}])
            parts.append("## MNIST test NLL next to Burda et al. (2016)\n\n"
                         + markdown_table(pd.concat([mine, paper])[["model", "test NLL", "budget", "source"]]))
    frey = frame[frame.dataset == "freyface"]
    if len(frey):
        columns = [c for c in ("model", "net", "budget", "wall_s", "K", "test_images", "train_ELBO", "test ELBO",
                               "test log p(x)", "stderr") if c in frey]
        parts.append("## Frey Face (Kingma & Welling 2013, 200 hidden units, Gaussian decoder)\n\n"
                     + markdown_table(frey[columns]))
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedule", choices=["burda", "constant"], default="burda")
    parser.add_argument("--stages", type=int, default=8, help="burda: stages i < STAGES of 3^i epochs (8: 3280)")
    parser.add_argument("--epochs", type=int, default=10, help="constant: epochs")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3, help="the (first) learning rate")
    parser.add_argument("--adam-eps", type=float, default=TrainConfig.adam_eps, help="Adam's eps, both contenders")
    parser.add_argument("--no-data-init", action="store_true",
                        help="leave the decoder's output bias at torch's init (both contenders)")
    parser.add_argument("--num-samples", type=int, default=5000, help="K of the log p(x) estimate; 0: ELBO only")
    parser.add_argument("--train-size", type=int, help="use only the first N training images")
    parser.add_argument("--test-size", type=int, help="use only the first N test images (default: all 10000)")
    parser.add_argument("--tolerance", type=float, default=0.3, help="nats allowed between pplvae and PyTorch")
    parser.add_argument("--no-agreement", action="store_true", help="skip the hand-written PyTorch twin")
    parser.add_argument("--freyface-epochs", type=int, default=500, help="0 skips Frey Face")
    parser.add_argument("--freyface-batch-size", type=int, default=100)
    parser.add_argument("--freyface-lr", type=float, default=1e-3)
    parser.add_argument("--freyface-z-dim", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    args.device = str(parsed_device(parser, args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.num_samples and not hasattr(pplvae, "log_marginal_likelihood"):
        parser.error("this pplvae has no log_marginal_likelihood yet; pass --num-samples 0 for ELBOs only")
    args.out.mkdir(parents=True, exist_ok=True)

    curve: list[dict] = []
    rows, agreement = mnist_rows(args, curve)
    if args.freyface_epochs:
        rows += freyface_rows(args, curve)
    info = machine(resolve_device(args.device))
    frame = pd.DataFrame(rows).drop(columns=["_log_px"], errors="ignore")
    if agreement is not None:
        frame = frame.assign(**{f"agreement_{k}": v for k, v in agreement.items()})
    frame.assign(**{k: v for k, v in info.items() if k != "command"}).to_csv(args.out / "quality.csv", index=False)
    markdown = report(rows, agreement, args, info)
    (args.out / "quality.md").write_text(markdown)
    pd.DataFrame(curve).to_csv(args.out / "quality-curves.csv", index=False)
    plot(pd.DataFrame(curve), args.out / "quality.png")
    print(markdown)
    return frame


if __name__ == "__main__":
    main()
