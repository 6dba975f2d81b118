"""log p(x) of a user's plain-Pyro VAE through pplvae against a straightforward hand-written estimator.

The user's VAE below is written as a researcher writes one: ``pyro.distributions``
and ``torch.nn`` layers only, importing nothing from pplvae in its model code.
Its weights are those of a :class:`benchmarks.torch_vae.TorchVAE` (the same
parameter names), so both estimators score the same model on the same images:

* ``pplvae``: :func:`pplvae.log_marginal_likelihood` of the user's model and guide;
* ``hand-written``: :func:`benchmarks.torch_vae.log_marginal_likelihood`, a loop
  over images with chunks of ``--chunk-samples`` (500) samples,
  ``binary_cross_entropy_with_logits`` and ``logsumexp``.

With ``--compile`` a third contender is ``log_marginal_likelihood(...,
compile=True)``, its one-off compiles and chunk-size trials in the warm-up
(printed apart). With ``--floor`` a fourth, ``decoder only``, runs just the
decoder network on K x N inputs in the hand-written loop's chunks: no
sampling, no density, no reduction. Its ratio is the ceiling of any
estimator that runs this decoder on every sample. Each
round times every contender, the order rotating between rounds, for every
thread count of ``--threads``: the ratio ``hand-written seconds / pplvae
seconds`` (above 1: pplvae is faster) is paired within a round, so a shared
machine's load moves both alike. The weights are a run folder's (``--run``, a Burda-architecture
``pplvae train`` run) or the initial ones; either way the first
``--num-examples`` images of the fixed-binarized MNIST test set are scored.

    python -m benchmarks.marginal_throughput                          # K=5000, 20 images, 1 and 2 threads
    python -m benchmarks.marginal_throughput --run runs/mnist-vae --num-examples 100 --rounds 5 --compile
    python -m benchmarks.marginal_throughput --device cuda --num-examples 200 --threads 1   # on a GPU

Writes one row per round and thread count (``--out``) and prints the medians
and ranges of the ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from benchmarks.report import machine, parsed_device
from benchmarks.torch_vae import TorchVAE
from benchmarks.torch_vae import log_marginal_likelihood as hand_written_log_px


class UserVAE(nn.Module):
    """A VAE as a user writes it, plain Pyro: z ~ N(0, I), x | z ~ Bernoulli(logits=decoder(z))."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, z_dim: int):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.register_buffer("prior_loc", torch.zeros(z_dim))
        self.register_buffer("prior_scale", torch.ones(z_dim))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--run", type=Path, help="take the weights of this run folder (784-200-200-50 VAE)")
    parser.add_argument("--num-samples", type=int, default=5000, help="K per image (default 5000)")
    parser.add_argument("--num-examples", type=int, default=20, help="test images (default 20)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default 1 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per thread count (default 3)")
    parser.add_argument("--chunk-samples", type=int, default=500, help="the hand-written estimator's chunk (500)")
    parser.add_argument("--compile", action="store_true",
                        help="also time pplvae with compile=True (its compile falls in the warm-up, printed apart)")
    parser.add_argument("--floor", action="store_true",
                        help="also time the decoder alone on the same K x N draws (no density, no sampling): "
                             "the least time any estimator running this decoder needs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=Path("marginal_throughput.csv"), help="CSV to write")
    args = parser.parse_args(argv)
    args.device = parsed_device(parser, args.device)
    return args


def load_weights(twin: TorchVAE, run: Path | None) -> None:
    """Copy a run's encoder and decoder weights into ``twin`` (the same parameter names)."""
    if run is None:
        return
    from pplvae import load_run

    state = load_run(run, device="cpu").model.state_dict()
    twin.load_state_dict({k: v for k, v in state.items() if k in twin.state_dict()}, strict=True)


class CompiledOnce:
    """Calls ``fn``; the first call's time (the compile, once per process and shape) is printed apart."""

    def __init__(self, fn, device: torch.device):
        self.fn, self.device, self.compiled = fn, device, False

    def __call__(self):
        if self.compiled:
            return self.fn()
        seconds, out = timed(self.fn, self.device)
        self.compiled = True
        print(f"pplvae compiled: first call (with the compile) {seconds:.1f} s", flush=True)
        return out


def timed(fn, device: torch.device = torch.device("cpu")) -> tuple[float, torch.Tensor]:
    """Wall-clock seconds of ``fn()`` and its result; on CUDA, up to the end of the work it queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    from pplvae import load_dataset, log_marginal_likelihood

    data = load_dataset("mnist", args.data_dir, test_size=args.num_examples, train_size=args.num_examples)
    device = args.device
    x = data.x_test.to(device)  # (N, 784), a fixed binarization
    torch.manual_seed(args.seed)
    z_dim = 50
    twin = TorchVAE(x.shape[1], z_dim, (200, 200)).eval()
    load_weights(twin, args.run)
    twin.to(device)
    user = UserVAE(twin.encoder, twin.decoder, z_dim).to(device)

    def theirs():
        return hand_written_log_px(twin, x, args.num_samples, chunk_samples=args.chunk_samples)

    def ours(compile=False):
        return log_marginal_likelihood(user.model, user.guide, x, num_samples=args.num_samples,
                                       compile=compile).log_px

    def decoder_only():
        z = torch.zeros(args.chunk_samples, z_dim, device=device)
        with torch.no_grad():
            for _ in range(len(x)):
                for start in range(0, args.num_samples, args.chunk_samples):
                    twin.decoder(z[: min(args.chunk_samples, args.num_samples - start)])
        return torch.zeros(len(x))

    contenders = {"pplvae": ours, "hand-written": theirs}
    if args.compile:
        contenders["pplvae compiled"] = CompiledOnce(lambda: ours(compile=True), device)
    if args.floor:
        contenders["decoder only"] = decoder_only

    info = machine(device)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for fn in contenders.values():
            fn()  # warm up (and compile)
        for r in range(args.rounds):
            pyro.set_rng_seed(args.seed + r)
            names = list(contenders)
            names = names[r % len(names):] + names[: r % len(names)]  # the order rotates between rounds
            times, estimates = {}, {}
            for name in names:
                times[name], estimates[name] = timed(contenders[name], device)
            row = {"threads": threads, "round": r}
            for name in contenders:
                key = name.replace(" ", "_").replace("-", "_")
                row[f"{key}_seconds"] = times[name]
                row[f"{key}_log_px"] = estimates[name].mean().item()
                if name != "hand-written":
                    suffix = "" if key == "pplvae" else "_" + key.removeprefix("pplvae_")
                    row[f"speed_vs_hand_written{suffix}"] = times["hand-written"] / times[name]
            rows.append({**row, "num_samples": args.num_samples, "num_data": len(x), "device": info["device"],
                         "torch": torch.__version__, "date": info["date"]})
            print(f"threads {threads} round {r}: " + ", ".join(f"{n} {times[n]:.3f} s" for n in contenders),
                  flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    ratios = [c for c in table.columns if c.startswith("speed_vs_hand_written")]
    summary = table.groupby("threads")[ratios].agg(["median", "min", "max"])
    print("hand-written seconds / pplvae seconds (above 1: pplvae faster):")
    print(summary.to_string(float_format="%.2f"))
    return table


if __name__ == "__main__":
    main()
