"""Milliseconds per SVI step: pplvae, hand-written PyTorch and Pyro's example recipe, side by side.

One process, the same network and the same minibatches (real MNIST, binarized
once, held in memory) for every contender:

1. ``pplvae``: :class:`pplvae.Trainer` with its default settings
   (``Trainer.step`` under ``pyro.validation_enabled(config.validate)``, as
   :func:`pplvae.fit` runs it); ``pplvae compiled`` is the same with
   ``TrainConfig(compile=True)`` (its one-off compile time falls in the
   warm-up and is printed apart; ``--no-compile`` leaves it out;
   ``--compile-mode reduce-overhead`` replays it as CUDA graphs, GPU only);
2. ``torch``: :class:`benchmarks.torch_vae.TorchVAE`, the floor, with the
   Adam options pplvae's trainer uses (fused on CPU and CUDA), so that the
   ratio measures the probabilistic-programming layer alone;
   ``torch, Adam defaults`` is the same with ``torch.optim.Adam(params, lr)``;
3. ``pyro recipe``: :mod:`benchmarks.pyro_recipe`, ``SVI`` with
   ``pyro.optim.Adam`` and ``Trace_ELBO`` and Pyro's default validation.

All start from the same initial weights. Timing is interleaved: each repeat
times a block of steps of every contender in turn (``--steps``, or as many as
the floor takes in ``--block-seconds``), the order rotating between repeats,
after ``--warmup`` untimed steps each; the table
gives the median over repeats of wall-clock ms per step, and each ratio is the
median over repeats of the ratio to the floor within the same repeat, so that
load which drifts between repeats (a shared machine) cancels. Process CPU time
per step is recorded beside wall time. On CUDA each block ends with a
synchronize.

Usage (from the repository root)::

    python -m benchmarks.speed                     # both nets, batch 20, 128, 1024
    python -m benchmarks.speed --threads 1 --out benchmarks/results/threads-1
    python -m benchmarks.speed --profile           # also where pplvae's step spends its time
    python -m benchmarks.speed --device cuda --compile-mode reduce-overhead   # compiled step as CUDA graphs

Writes ``speed.csv`` (medians and ratios), ``speed-raw.csv`` (every block),
``speed.md`` (the table with the machine and command) and ``speed.png`` under
``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pyro
import torch

from benchmarks.pyro_recipe import PyroRecipeVAE, make_svi
from benchmarks.report import machine, markdown_machine, markdown_table, parsed_device
from benchmarks.torch_vae import make_step, torch_vae_like
from pplvae import TrainConfig, Trainer, VAE, VAEConfig, load_dataset
from pplvae.data import binarize
from pplvae.training import COMPILE_MODES

#: The networks: Burda et al. (2016)'s one-stochastic-layer VAE, and Pyro's VAE example.
NETS = {
    "burda 784-200-200-50 tanh": dict(z_dim=50, hidden_dims=(200, 200), activation="tanh"),
    "pyro example 784-400-50 softplus": dict(z_dim=50, hidden_dims=(400,), activation="softplus"),
}
NET_KEYS = {"burda": "burda 784-200-200-50 tanh", "pyro-example": "pyro example 784-400-50 softplus"}
FLOOR = "torch"
CONTENDERS = ("pplvae", "pplvae compiled", "torch", "torch, Adam defaults", "pyro recipe")


def build_steps(x_dim: int, net: dict, batch_size: int, learning_rate: float, device: torch.device,
                compile: bool = True, compile_mode: str = "default") -> dict:
    """Per contender ``(step, context)``: ``step(x)`` takes one SVI step, run inside ``context()``.

    All contenders start from the same initial weights. ``compile_mode`` is
    ``TrainConfig.compile_mode`` of the compiled contender (``"reduce-overhead"``:
    CUDA graphs, GPU only).
    """
    pplvae_vae = VAE(VAEConfig(x_dim=x_dim, **net))
    config = TrainConfig(batch_size=batch_size, learning_rate=learning_rate, device=str(device))
    trainer = Trainer(pplvae_vae, config)
    compiled_vae = VAE(pplvae_vae.config)
    compiled_vae.load_state_dict(pplvae_vae.state_dict())
    compiled = Trainer(compiled_vae, TrainConfig(**{**asdict(config), "compile": True, "compile_mode": compile_mode}))
    def torch_step_with(adam_options):
        twin = torch_vae_like(pplvae_vae)
        return make_step(twin, torch.optim.Adam(twin.parameters(), lr=learning_rate, **adam_options))

    recipe = PyroRecipeVAE(x_dim, **net).to(device)
    recipe.load_state_dict(torch_vae_like(pplvae_vae).state_dict())
    svi = make_svi(recipe, learning_rate)
    fused = trainer.optimizer.defaults.get("fused")
    return {
        # As pplvae.fit runs it: validation set once around the loop, not per step.
        "pplvae": (trainer.step, lambda: pyro.validation_enabled(trainer.config.validate)),
        "pplvae compiled": (compiled.step, lambda: pyro.validation_enabled(compiled.config.validate)),
        "torch": (torch_step_with({"fused": fused}), contextlib.nullcontext),
        "torch, Adam defaults": (torch_step_with({}), contextlib.nullcontext),
        "pyro recipe": (svi.step, contextlib.nullcontext),  # Pyro's default validation
    } if compile else {
        "pplvae": (trainer.step, lambda: pyro.validation_enabled(trainer.config.validate)),
        "torch": (torch_step_with({"fused": fused}), contextlib.nullcontext),
        "torch, Adam defaults": (torch_step_with({}), contextlib.nullcontext),
        "pyro recipe": (svi.step, contextlib.nullcontext),
    }


def time_block(contender, batches, device: torch.device) -> tuple[float, float]:
    """Wall and process-CPU milliseconds per step over ``batches``; ``contender`` is (step, context)."""
    step, context = contender
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    with context():
        for x in batches:
            step(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    n = len(batches)
    return (time.perf_counter() - wall) * 1e3 / n, (time.process_time() - cpu) * 1e3 / n


def draw_batches(x_train: torch.Tensor, count: int, batch_size: int, generator: torch.Generator) -> list:
    """``count`` minibatches (batch_size, x_dim) of random training images, binarized once."""
    idx = torch.randint(len(x_train), (count, batch_size), device=x_train.device, generator=generator)
    return [binarize(x_train[i], generator) for i in idx]


def measure(x_train: torch.Tensor, net_name: str, batch_size: int, args, device: torch.device) -> list[dict]:
    """Interleaved blocks of every contender at one net and batch size.

    Without ``--steps`` a block has as many steps as the floor takes in about
    ``--block-seconds`` (estimated from its warm-up), at least 5.
    """
    generator = torch.Generator(device=device).manual_seed(args.seed)
    warmup = draw_batches(x_train, args.warmup, batch_size, generator)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    steps = build_steps(x_train.shape[1], NETS[net_name], batch_size, args.lr, device, not args.no_compile,
                        args.compile_mode)
    for name, step in steps.items():
        start = time.perf_counter()
        time_block(step, warmup, device)
        if name == "pplvae compiled":
            print(f"{net_name}, batch {batch_size}: compiled in {time.perf_counter() - start:.1f} s", flush=True)
    floor_ms, _ = time_block(steps[FLOOR], warmup, device)
    count = args.steps or max(5, round(args.block_seconds * 1e3 / floor_ms))
    batches = draw_batches(x_train, count, batch_size, generator)
    rows = []
    names = list(steps)
    for repeat in range(args.repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]
        for name in order:
            wall, cpu = time_block(steps[name], batches, device)
            rows.append(dict(net=net_name, batch_size=batch_size, contender=name, repeat=repeat,
                             steps=count, wall_ms=wall, cpu_ms=cpu))
    return rows


def summarize(raw: pd.DataFrame) -> pd.DataFrame:
    """Medians per contender and the median within-repeat ratio to the floor."""
    keys = ["net", "batch_size", "repeat"]
    floor = raw[raw.contender == FLOOR][keys + ["wall_ms", "cpu_ms"]]
    raw = raw.merge(floor, on=keys, suffixes=("", "_floor"))
    raw["ratio"] = raw.wall_ms / raw.wall_ms_floor
    raw["cpu_ratio"] = raw.cpu_ms / raw.cpu_ms_floor
    summary = raw.groupby(["net", "batch_size", "contender"], sort=False)[
        ["wall_ms", "cpu_ms", "ratio", "cpu_ratio"]].median().reset_index()
    return summary


def table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per net and batch size: ms per step of each contender and the ratios to the floor."""
    wide = summary.pivot_table(index=["net", "batch_size"], columns="contender",
                               values=["wall_ms", "ratio", "cpu_ratio"], sort=False)
    rows = []
    for (net, batch), row in wide.iterrows():
        rows.append({
            "net": net, "batch": batch,
            **{f"{c} ms": row[("wall_ms", c)] for c in CONTENDERS if ("wall_ms", c) in row},
            "pplvae / torch": row[("ratio", "pplvae")],
            **({"pplvae compiled / torch": row[("ratio", "pplvae compiled")]}
               if ("ratio", "pplvae compiled") in row else {}),
            "pyro recipe / torch": row[("ratio", "pyro recipe")],
            "pplvae / torch (CPU time)": row[("cpu_ratio", "pplvae")],
        })
    return pd.DataFrame(rows)


def plot(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = list(dict.fromkeys(summary.net))
    fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets), 3.8), squeeze=False)
    for ax, net in zip(axes[0], nets):
        part = summary[(summary.net == net) & (summary.contender != FLOOR)]
        batches = list(dict.fromkeys(part.batch_size))
        contenders = [c for c in CONTENDERS if c != FLOOR and c in set(part.contender)]
        width = 0.8 / len(contenders)
        for k, name in enumerate(contenders):
            ratios = [part[(part.batch_size == b) & (part.contender == name)].ratio.iloc[0] for b in batches]
            ax.bar([i + k * width for i in range(len(batches))], ratios, width, label=name)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.1, color="k", lw=0.8, ls=":")
        ax.set_xticks([i + width * (len(contenders) - 1) / 2 for i in range(len(batches))],
                      [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel("wall time per step / hand-written PyTorch")
        ax.set_title(net, fontsize=10)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def profile(x_train: torch.Tensor, net_name: str, batch_size: int, args, device: torch.device) -> str:
    """cProfile (Python) and torch.profiler (operators) of pplvae's and the floor's steps."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    generator = torch.Generator(device=device).manual_seed(args.seed)
    batches = draw_batches(x_train, args.steps or 20, batch_size, generator)
    steps = build_steps(x_train.shape[1], NETS[net_name], batch_size, args.lr, device)
    out = io.StringIO()
    for name in ("pplvae", FLOOR):
        time_block(steps[name], batches[: args.warmup], device)
        python = cProfile.Profile()
        python.enable()
        time_block(steps[name], batches, device)
        python.disable()
        out.write(f"## {name}, {net_name}, batch {batch_size}: Python functions by own time\n\n")
        pstats.Stats(python, stream=out).sort_stats("tottime").print_stats(25)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=activities) as operators:
            time_block(steps[name], batches, device)
        out.write(f"## {name}: torch operators ({len(batches)} steps)\n\n")
        out.write(operators.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        out.write("\n\n")
    return out.getvalue()


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", nargs="+", choices=sorted(NET_KEYS), default=["burda", "pyro-example"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[20, 128, 1024])
    parser.add_argument("--steps", type=int, help="timed steps per block (default: from --block-seconds)")
    parser.add_argument("--block-seconds", type=float, default=0.5,
                        help="without --steps: steps per block such that the floor takes about this long")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved blocks per contender")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per contender first")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--train-size", type=int, help="use only the first N training images")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PPLVAE_DATA_DIR)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled pplvae step")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                        help="torch.compile mode of the compiled step; reduce-overhead (CUDA graphs) needs a GPU")
    parser.add_argument("--profile", action="store_true",
                        help="also profile pplvae's and the floor's steps at batch 128 (profile.txt)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = parsed_device(parser, args.device)
    if not args.no_compile:
        try:  # TrainConfig's own check of the compiled contender's settings, before anything is measured
            TrainConfig(device=str(device), compile=True, compile_mode=args.compile_mode)
        except ValueError as error:
            parser.error(str(error))
    x_train = load_dataset("mnist", args.data_dir, train_size=args.train_size, device=device).x_train
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for net in (NET_KEYS[n] for n in args.nets):
        for batch_size in args.batch_sizes:
            rows += measure(x_train, net, batch_size, args, device)
            print(f"{net}, batch {batch_size}: done", flush=True)
    raw = pd.DataFrame(rows)
    summary = summarize(raw)
    result = table(summary)
    info = machine(device)
    raw.to_csv(args.out / "speed-raw.csv", index=False)
    summary.assign(**{k: v for k, v in info.items() if k != "command"}).to_csv(args.out / "speed.csv", index=False)
    blocks = f"{args.steps} steps" if args.steps else f"about {args.block_seconds:g} s"
    markdown = (f"# Speed: ms per SVI step (median of {args.repeats} interleaved blocks of {blocks})\n\n"
                f"{markdown_machine(info)}\n\nCompiled step: `compile_mode={args.compile_mode!r}`.\n\n"
                f"{markdown_table(result)}\n")
    (args.out / "speed.md").write_text(markdown)
    plot(summary, args.out / "speed.png")
    if args.profile:
        batch = 128 if 128 in args.batch_sizes else args.batch_sizes[0]
        (args.out / "profile.txt").write_text(profile(x_train, NET_KEYS[args.nets[0]], batch, args, device))
    print(markdown)
    return result


if __name__ == "__main__":
    main()
