"""Throughput of pplvae.log_marginal_likelihood on Burda et al.'s 784-200-200-50 VAE over MNIST.

Evaluates log p(x) on the MNIST test set with K importance samples per image
(Burda, Grosse & Salakhutdinov 2016, section 5.2: K = 5000, 10,000 images) and
reports the achieved decoder GFLOP/s (2 * in * out per Linear layer of the
decoder per sample) against the rate ``torch.mm`` reaches, in the same process,
on the decoder's matrix shapes with the rows of one chunk of the estimator or
of one image's samples in it, whichever is faster (:class:`MatmulReference`), two ways:
``ratio_to_mm`` against the faster of two timings just before and just after
the estimate (the bar set by the quietest moment), and ``ratio_to_mm_during``
against the mean of short timings taken between chunks about every
``--mm-every`` seconds during the estimate (the same load as the estimate
itself had; their time is not counted as the estimate's). On a shared machine
the wall-clock ratio depends on the load at each moment, so the ratio per
second of this process's CPU time is reported beside them. Also reports wall
time and peak memory during the estimate (CPU: the process's peak resident
set, reset just before it through Linux's ``/proc/self/clear_refs``, beside the
resident set before it; CUDA: ``torch.cuda.max_memory_allocated``). Runs on CUDA when present.

    python -m benchmarks.marginal_throughput                     # full: K=5000, 10,000 images
    python -m benchmarks.marginal_throughput --num-samples 100 --num-examples 100   # quick
    python -m benchmarks.marginal_throughput --num-examples 1000 --hand-written     # with the reference run

The model is trained briefly first (``--train-epochs`` on ``--train-size``
images), or loaded from a run folder with ``--run``; either way the first
``--num-examples`` images of the fixed-binarized MNIST test set are scored.
With ``--hand-written`` the same images are also scored by a hand-written
PyTorch estimator (:func:`benchmarks.torch_vae.log_marginal_likelihood`: the
same weights and K, PyTorch's own ``nn.Tanh`` and
``binary_cross_entropy_with_logits``) and ``speed_vs_hand_written`` is its
wall time over pplvae's (above 1: pplvae is faster). The
``cpu_capability`` column records which of PyTorch's CPU kernels ran
(``ATEN_CPU_CAPABILITY=avx2`` in the environment selects the AVX2 ones).
Writes one CSV row (``--out``) and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import resource
import sys
import time
from pathlib import Path

import pandas as pd
import pyro
import torch
from torch import nn

from benchmarks.torch_vae import log_marginal_likelihood as hand_written_log_px
from benchmarks.torch_vae import torch_vae_like
from pplvae import TrainConfig, VAE, VAEConfig, fit, load_dataset, load_run, log_marginal_likelihood
from pplvae.training import resolve_device


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="evaluate this trained run instead of training one")
    parser.add_argument("--num-samples", type=int, default=5000, help="K per image (default 5000)")
    parser.add_argument("--num-examples", type=int, default=10000, help="test images (default: all 10,000)")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs of the brief training")
    parser.add_argument("--train-size", type=int, default=60000, help="training images for the brief training")
    parser.add_argument("--max-memory-mb", type=float,
                        help="estimator's budget per chunk, MiB (default: the library's, 128 per thread on a CPU)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--hand-written", action="store_true",
                        help="also time a hand-written PyTorch estimator on the same images (reference run)")
    parser.add_argument("--mm-repeats", type=int, default=20, help="timed torch.mm repeats per measurement")
    parser.add_argument("--mm-every", type=float, default=5.0,
                        help="seconds of estimate between the torch.mm timings taken during it (default 5)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=Path("marginal_throughput.csv"), help="CSV to write")
    return parser.parse_args(argv)


def decoder_flops_per_sample(model: VAE) -> int:
    """2 * in * out summed over the decoder's Linear layers: multiply-adds of one z -> logits pass."""
    return sum(2 * m.in_features * m.out_features for m in model.decoder.modules() if isinstance(m, nn.Linear))


class MatmulReference:
    """``torch.mm`` on the decoder's shapes, (rows, in) @ (in, out) per Linear layer: the reference rate.

    Timed at two row counts, the samples of one datapoint in a chunk (k) and
    the whole chunk (k * n), and the faster counts: the stronger bar. On a CPU
    the chunk of several images makes outputs larger than the caches (15,000 x
    784 floats are 47 MB), where ``torch.mm`` itself slows down by up to a
    third; that rate alone would flatter the ratio. The matrices are made
    once, so that timing it again (before, during and after an estimate)
    costs only the timed products.

    Args:
        model: the VAE whose decoder's ``nn.Linear`` layers give the shapes.
        chunk_shape: (k, n), the estimator's samples x datapoints per chunk.
        device: where to time.
    """

    def __init__(self, model: VAE, chunk_shape: tuple[int, int], device: torch.device):
        k, n = chunk_shape
        self.row_counts = sorted({k, k * n})
        self.device = device
        self.shapes = [(m.in_features, m.out_features) for m in model.decoder.modules() if isinstance(m, nn.Linear)]
        self.a = {rows: [torch.randn(rows, i, device=device) for i, _ in self.shapes] for rows in self.row_counts}
        self.w = [torch.randn(i, o, device=device) for i, o in self.shapes]
        self.out = {rows: [torch.empty(rows, o, device=device) for _, o in self.shapes] for rows in self.row_counts}

    def _once(self, rows: int) -> None:
        for a_i, w_i, out_i in zip(self.a[rows], self.w, self.out[rows]):
            torch.mm(a_i, w_i, out=out_i)

    def rate(self, repeats: int) -> tuple[float, float]:
        """GFLOP/s over ``repeats`` passes (after one untimed), the faster row count's: (per wall-clock second, per second of CPU time)."""
        best = (0.0, 0.0)
        for rows in self.row_counts:
            self._once(rows)  # warm up
            with Timer(self.device) as timer:
                for _ in range(repeats):
                    self._once(rows)
            gflop = repeats * rows * sum(2 * i * o for i, o in self.shapes) / 1e9
            best = max(best, (gflop / timer.seconds, gflop / timer.cpu_seconds))
        return best


class _MatmulDuring:
    """A ``progress`` callback of the estimator that times ``torch.mm`` about every ``every`` seconds.

    Each timing is :meth:`MatmulReference.rate` with ``repeats`` repeats, so that the
    reference rate sees the same load as the estimate around it; ``seconds``
    and ``cpu_seconds`` add up the time spent here, to be taken off the
    estimate's. The first timing comes after the first chunk.
    """

    def __init__(self, reference: MatmulReference, repeats: int, every: float):
        self.reference, self.repeats, self.every = reference, repeats, every
        self.rates: list[float] = []
        self.seconds = self.cpu_seconds = 0.0
        self._next = time.perf_counter()

    def __call__(self, done: int) -> None:
        if time.perf_counter() < self._next:
            return
        with Timer(self.reference.device) as timer:
            self.rates.append(self.reference.rate(self.repeats)[0])
        self.seconds += timer.seconds
        self.cpu_seconds += timer.cpu_seconds
        self._next = time.perf_counter() + self.every

    @property
    def mean_rate(self) -> float:
        """Mean GFLOP/s of the timings (NaN if none)."""
        return sum(self.rates) / len(self.rates) if self.rates else math.nan


class Timer:
    """Wall-clock and process CPU seconds of a block (CUDA synchronized at both ends)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        _sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_rss() -> float:
    """Reset the process's peak resident set (Linux ``clear_refs``) and return the current one, MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mib("VmRSS")
    except OSError:  # not Linux: fall back to the lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss() -> float:
    """Peak resident set since the last reset, MiB (lifetime peak where it cannot be reset)."""
    try:
        return _status_mib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise OSError(f"no {field} in /proc/self/status")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    data = load_dataset("mnist", args.data_dir, train_size=args.train_size, test_size=args.num_examples)
    if args.run is not None:
        model = load_run(args.run, device).model
    else:
        model = VAE(VAEConfig(x_dim=data.x_dim, z_dim=50, hidden_dims=(200, 200), activation="tanh"))
        fit(model, data, TrainConfig(epochs=args.train_epochs, batch_size=100, device=str(device), seed=args.seed))
        model.eval()
    x = data.x_test[: args.num_examples].to(device)  # (N, 784), fixed binarization
    num_data, num_samples = len(x), args.num_samples

    budget = None if args.max_memory_mb is None else int(args.max_memory_mb * 2**20)
    # A warm-up on the first 64 images gives the chunk shape (the same as the full
    # run's unless a chunk holds more images): torch.mm is timed on it just before
    # the estimate and again just after, and the faster of the two is the reference,
    # so that the quieter moment of a shared machine sets the bar.
    warm_up = log_marginal_likelihood(model.model, model.guide, x[:64], num_samples=num_samples, max_memory_bytes=budget)
    reference = MatmulReference(model, warm_up.chunk_shape, device)
    mm_before = reference.rate(args.mm_repeats)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    memory_before = _reset_peak_rss() if device.type != "cuda" else torch.cuda.memory_allocated(device) / 2**20
    during = _MatmulDuring(reference, max(1, args.mm_repeats // 4), args.mm_every)
    pyro.set_rng_seed(args.seed)
    with Timer(device) as timer:
        result = log_marginal_likelihood(
            model.model, model.guide, x, num_samples=num_samples, max_memory_bytes=budget, progress=during
        )
    seconds = timer.seconds - during.seconds
    cpu_seconds = timer.cpu_seconds - during.cpu_seconds
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss()

    hand_written = {}
    if args.hand_written:  # the reference run, side by side: same weights, images, K and device
        twin = torch_vae_like(model).eval()
        pyro.set_rng_seed(args.seed)
        with Timer(device) as hand_timer:
            hand_log_px = hand_written_log_px(twin, x, num_samples, chunk_samples=result.chunk_shape[0])
        hand_written = {
            "hand_written_seconds": hand_timer.seconds,
            "hand_written_log_px": hand_log_px.mean().item(),
            "speed_vs_hand_written": hand_timer.seconds / seconds,
        }

    if warm_up.chunk_shape == result.chunk_shape:
        mm_after = reference.rate(args.mm_repeats)
        mm_rate, mm_cpu_rate = max(mm_after[0], mm_before[0]), max(mm_after[1], mm_before[1])
    else:
        mm_rate, mm_cpu_rate = MatmulReference(model, result.chunk_shape, device).rate(args.mm_repeats)
    decoder_gflop = decoder_flops_per_sample(model) * num_samples * num_data / 1e9
    summary = result.to_frame()
    table = pd.DataFrame([{
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_samples": num_samples,
        "num_data": num_data,
        "chunk_samples": result.chunk_shape[0],
        "chunk_data": result.chunk_shape[1],
        "seconds": seconds,
        "samples_per_second": num_samples * num_data / seconds,
        "decoder_gflop": decoder_gflop,
        "decoder_gflops_per_s": decoder_gflop / seconds,
        "mm_gflops_per_s": mm_rate,
        "ratio_to_mm": decoder_gflop / seconds / mm_rate,
        "mm_gflops_per_s_during": during.mean_rate,
        "ratio_to_mm_during": decoder_gflop / seconds / during.mean_rate,
        "mm_timings_during": len(during.rates),
        "cpu_seconds": cpu_seconds,
        "ratio_to_mm_cpu_time": decoder_gflop / cpu_seconds / mm_cpu_rate,
        "peak_memory_mib": peak,
        "memory_before_mib": memory_before,
        "elbo": summary.loc[0, "elbo"],
        "iwae_50": summary.loc[0, "iwae_50"] if "iwae_50" in summary else float("nan"),
        "log_px": summary.loc[0, "log_px"],
        "log_px_stderr": summary.loc[0, "log_px_stderr"],
        **hand_written,
    }])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.T.to_string(header=False))
    print(f"written to {args.out}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
