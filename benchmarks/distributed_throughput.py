"""Images per second of data-parallel training: 1 and N processes under torchrun, and the scaling efficiency.

For each process count P in ``--nprocs`` (default 1 2) this script starts
``python -m torch.distributed.run --standalone --nproc_per_node=P -m
benchmarks.distributed_throughput --worker ...`` with ``OMP_NUM_THREADS`` =
``--threads`` per process. Every rank builds the same VAE (default MNIST
sizes, hidden 200-200, z 50), holds the first ``--train-size`` real MNIST
images, and runs :meth:`pplvae.Trainer.step` on its share of each global
minibatch (per-rank batch ``--batch-size``, global batch P x that: weak
scaling, as ``torchrun ... -m pplvae train`` does) for ``--warmup`` untimed
steps, then ``--steps`` timed ones between two barriers. Rank 0 reports

    images/s = steps x batch-size x P / wall seconds,

and the driver adds the scaling efficiency images/s(P) / (P x images/s(1)).
On a CPU the P processes share the machine's cores: with 2 cores and 1
thread per process, perfect scaling is 2 processes at 1.0; the efficiency
also pays for gloo's gradient all-reduce (1.7 MB of float32 per step for
the default model, 424k parameters) and for waiting: every step ends in a
collective, so a rank descheduled by other work on a shared machine stalls
all of them. The table records the machine's load average before and after
each measurement.

Usage (from the repository root)::

    python -m benchmarks.distributed_throughput                      # CPU: 1 and 2 processes
    python -m benchmarks.distributed_throughput --device cuda --nprocs 1 2 4 8 --threads 4

Every process count is measured ``--repeats`` times, interleaved (1, 2, 1,
2, ...), and the table gives the median images/s (with the min and max) and
the efficiency of the medians.

Writes ``distributed_throughput.csv`` and ``.md`` (table, machine, command),
and every measurement in ``distributed_throughput-raw.csv``,
under ``--out`` (default ``benchmarks/results``) and prints the command for N GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks.report import machine, markdown_machine, markdown_table

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (OMP_NUM_THREADS)")
    parser.add_argument("--batch-size", type=int, default=128, help="per-rank batch")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per rank")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per rank first")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[200, 200])
    parser.add_argument("--z-dim", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements of every process count, interleaved; the table gives their median")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # rank 0's result file, set by the driver
    return parser.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One rank: steps on its share of the global minibatches; rank 0 writes images/s to ``args.worker``."""
    import pyro

    from pplvae import VAE, TrainConfig, Trainer, VAEConfig, distributed, load_dataset

    distributed.init_from_env()
    data = load_dataset("mnist", train_size=args.train_size, test_size=100)
    pyro.set_rng_seed(distributed.rank_seed(0))
    model = VAE(VAEConfig(x_dim=data.x_dim, z_dim=args.z_dim, hidden_dims=tuple(args.hidden_dims)))
    trainer = Trainer(model, TrainConfig(batch_size=args.batch_size, device=args.device))
    data = data.to(trainer.device)

    def steps():
        while True:
            yield from trainer.batches(data)
            trainer.epoch += 1

    batches = steps()

    def run(count: int) -> None:
        """``count`` steps, then every rank's work done (CUDA synchronized, a barrier)."""
        for _ in range(count):
            args_, kwargs = next(batches)
            trainer.step(*args_, **kwargs)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        distributed.barrier()

    run(args.warmup)
    start = time.perf_counter()
    run(args.steps)
    seconds = time.perf_counter() - start
    world = distributed.world_size()
    if distributed.is_rank0():
        result = {"processes": world, "threads_per_process": torch.get_num_threads(),
                  "batch_per_rank": args.batch_size, "global_batch": args.batch_size * world,
                  "steps": args.steps, "seconds": seconds,
                  "images_per_second": args.steps * args.batch_size * world / seconds,
                  "ms_per_step": 1000 * seconds / args.steps, "device": str(trainer.device)}
        args.worker.write_text(json.dumps(result))
    distributed.destroy()


def launch(args: argparse.Namespace, nproc: int, result: Path) -> dict:
    """Run the workers of one process count under torchrun; returns rank 0's result."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "benchmarks.distributed_throughput", "--worker", str(result),
               "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--train-size", str(args.train_size), "--z-dim", str(args.z_dim),
               "--device", args.device, "--hidden-dims", *map(str, args.hidden_dims)]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": path}
    load = os.getloadavg()[0]
    subprocess.run(command, env=env, cwd=REPO, check=True)
    # the machine's 1-minute load average before and after: other work on a shared CPU slows the collectives
    measured = json.loads(result.read_text())
    result.unlink()
    return {**measured, "load_before": load, "load_after": os.getloadavg()[0]}


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    if args.worker is not None:
        torch.set_num_threads(args.threads)
        worker(args)
        return pd.DataFrame()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [{"repeat": repeat, **launch(args, nproc, args.out / f".distributed_throughput_{nproc}.json")}
            for repeat in range(args.repeats) for nproc in args.nprocs]
    raw = pd.DataFrame(rows)
    raw.to_csv(args.out / "distributed_throughput-raw.csv", index=False)
    table = raw.groupby("processes", as_index=False).agg(
        threads_per_process=("threads_per_process", "first"), batch_per_rank=("batch_per_rank", "first"),
        global_batch=("global_batch", "first"), images_per_second=("images_per_second", "median"),
        images_per_second_min=("images_per_second", "min"), images_per_second_max=("images_per_second", "max"),
        ms_per_step=("ms_per_step", "median"), load_average=("load_before", "median"))
    base = table.loc[table.processes == 1, "images_per_second"]
    if len(base):
        table["speedup"] = table.images_per_second / base.iloc[0]
        table["scaling_efficiency"] = table.speedup / table.processes
    table.to_csv(args.out / "distributed_throughput.csv", index=False)
    info = machine(torch.device(args.device.split(":")[0]))
    info["torch_threads"] = args.threads
    command = ("torchrun --standalone --nproc_per_node=N -m pplvae train --dataset mnist "
               f"--batch-size {args.batch_size}   # N GPUs: one rank per GPU, global batch N x {args.batch_size}")
    text = (f"# Data-parallel throughput\n\n{markdown_table(table)}\n\n{markdown_machine(info)}\n\n"
            f"On N GPUs: `{command}`\n")
    (args.out / "distributed_throughput.md").write_text(text)
    print(table.to_string(index=False))
    print(f"threads per process: {args.threads}; written to {args.out / 'distributed_throughput.csv'}")
    print(f"on N GPUs: {command}")
    return table


if __name__ == "__main__":
    main()
