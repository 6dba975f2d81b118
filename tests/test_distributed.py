"""Data parallelism under torchrun, on the CPU with gloo and 2 processes spawned by the tests.

Each test starts ``python -m torch.distributed.run --standalone`` (a free
port is chosen by the rendezvous) running ``tests/distributed_worker.py``,
with ``OMP_NUM_THREADS=1`` per rank and a timeout, and checks what rank 0
wrote. No GPU is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyro
import pytest
import torch

from pplvae import load_checkpoint, log_marginal_likelihood
from pplvae.distributed import rank_seed, shard_range
from pplvae.evaluation import evaluate_run
from pplvae.runs import EVALUATION

WORKER = Path(__file__).with_name("distributed_worker.py")
REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180
TINY = ["--train-size", "256", "--test-size", "64", "--z-dim", "2", "--hidden-dims", "16", "--batch-size", "64",
        "--no-progress", "--device", "cpu"]

sys.path.insert(0, str(WORKER.parent))
import distributed_worker  # noqa: E402  (the worker's model and data, for the one-process references)


def torchrun(nproc: int, *args, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the worker with ``nproc`` ranks; returns the finished process (stdout and stderr as text)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(WORKER), *map(str, args)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=TIMEOUT_S)
    if check and done.returncode != 0:
        raise AssertionError(f"torchrun exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}")
    return done


def test_the_ranks_shares_of_a_step_are_one_rank_s_minibatch():
    """Step s of 2 ranks at batch B covers the rows of step s of 1 rank at 2B, every rank the same
    number of steps; a new epoch is a new permutation; 1 rank sees every row once."""
    from pplvae.distributed import shard_batches

    for n in (256, 250, 7):
        one = list(shard_batches(n, 128, seed=3, epoch=1, rank_=0, world=1))
        two = [list(shard_batches(n, 64, seed=3, epoch=1, rank_=r, world=2)) for r in range(2)]
        assert torch.equal(torch.cat(one).sort().values, torch.arange(n))
        assert len(two[0]) == len(two[1]) == len(one)
        for step, rows in enumerate(one):
            shared = torch.cat([two[0][step], two[1][step]]).unique()
            padded = torch.cat([rows, torch.cat(one)[: len(two[0][step]) + len(two[1][step]) - len(rows)]])
            assert set(shared.tolist()) <= set(padded.tolist()) and set(rows.tolist()) <= set(shared.tolist())
    assert not torch.equal(next(shard_batches(256, 128, 3, 1, 0, 1)), next(shard_batches(256, 128, 3, 2, 0, 1)))


@pytest.mark.slow
def test_two_ranks_at_batch_64_equal_one_process_at_batch_128(tmp_path):
    """The definition of correct data parallelism: same global minibatches, same updates.

    Both runs go through torchrun (1 and 2 ranks), so both take their
    minibatches from the same ``DistributedSampler`` permutation per epoch:
    the 2 ranks' shares of step s together are the 1 rank's minibatch s. The
    model (:class:`distributed_worker.FixedNoiseGaussian`) draws its
    reparameterization noise from a fixed table indexed by the datapoint, so
    every datapoint's loss is the same in both runs; DDP's average of the
    two per-rank means of 64 is then the mean over the 128, and 3 epochs of
    Adam end at the same parameters to float rounding. The 1-rank run reads
    tensors, the 2-rank run the same data as a ``TensorDataset`` (pplvae's
    two sharding paths); the test ELBO over 11 datapoints (6 + 5 per rank)
    is the same all-reduced mean.
    """
    torchrun(1, "fit", tmp_path / "one.pt", "fixed", 128, 3)
    torchrun(2, "fit", tmp_path / "two.pt", "fixed-dataset", 64, 3)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for key in ("train_elbo", "test_elbo"):
        torch.testing.assert_close(two[key], one[key], rtol=1e-6, atol=1e-6)
    pyro.set_rng_seed(0)
    initial = distributed_worker.FixedNoiseGaussian().state_dict()
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-5, atol=1e-6)
        if name != "noise":
            assert not torch.equal(value, initial[name]), f"{name} did not train"


@pytest.mark.slow
def test_two_rank_estimates_are_one_process_estimates_of_the_shards(tmp_path):
    """Sharded log p(x): rank r estimates rows shard_range(N, r, 2) after seeding rank_seed(seed, r).

    With those seeds one process gets the same per-datapoint numbers on the
    same shards (the same draws), concatenated in order; on the whole set
    with one seed it agrees within Monte Carlo error.
    """
    torchrun(2, "estimate", tmp_path / "two.pt", 5)
    got = torch.load(tmp_path / "two.pt")
    model = distributed_worker.small_vae()
    x = distributed_worker.binary_images(n=7).x_test[:7]
    expected = []
    for rank in range(2):
        pyro.set_rng_seed(rank_seed(5, rank))
        expected.append(log_marginal_likelihood(model.model, model.guide, x[shard_range(7, rank, 2)],
                                                num_samples=50))
    torch.testing.assert_close(got["log_px"], torch.cat([e.log_px for e in expected]), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got["ess"], torch.cat([e.ess for e in expected]), rtol=1e-4, atol=1e-3)
    pyro.set_rng_seed(5)
    whole = log_marginal_likelihood(model.model, model.guide, x, num_samples=5000)
    assert (got["log_px"] - whole.log_px).abs().max() < 1.0  # K=50 against K=5000: Monte Carlo error only


@pytest.mark.slow
def test_a_run_resumed_with_two_ranks_equals_an_uninterrupted_one(tmp_path):
    """Stopped after epoch 1 and resumed: every rank's random stream (reparameterization noise and
    dynamic binarization) is restored from the checkpoint, so the weights and metrics are exact."""
    torchrun(2, "fit", tmp_path / "straight.pt", "vae", 64, 2, tmp_path / "straight")
    torchrun(2, "fit", tmp_path / "first.pt", "vae", 64, 1, tmp_path / "split")
    state = load_checkpoint(tmp_path / "split" / "checkpoint.pt", keys=("rng_ranks",))
    assert len(state["rng_ranks"]) == 2 and state["config"]["distributed"] == {
        "world_size": 2, "batch_size_per_rank": 64, "global_batch_size": 128}
    torchrun(2, "fit", tmp_path / "resumed.pt", "vae", 64, 2, tmp_path / "split", "resume")
    straight, resumed = torch.load(tmp_path / "straight.pt"), torch.load(tmp_path / "resumed.pt")
    assert torch.equal(straight["train_elbo"], resumed["train_elbo"])
    for name, value in straight["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    columns = ["epoch", "train_elbo", "test_elbo"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "split" / "metrics.csv")[columns],
                                  pd.read_csv(tmp_path / "straight" / "metrics.csv")[columns])


@pytest.mark.slow
def test_a_dead_rank_fails_the_job_clearly_and_keeps_the_last_checkpoint(tmp_path, data_dir):
    """Rank 1 is killed (SIGKILL) as epoch 2 starts: torchrun exits non-zero naming rank 1, rank 0
    says it lost a rank, and the epoch-1 checkpoint is whole. The folder then evaluates under
    torchrun to an ``evaluation.csv`` with one process's columns."""
    out = tmp_path / "run"
    env = {"PPLVAE_TEST_KILL_RANK": "1", "PPLVAE_TEST_KILL_AT_EPOCH": "2", "PPLVAE_DATA_DIR": str(data_dir)}
    done = torchrun(2, "cli", "train", "--epochs", "3", "--out", out, *TINY, env=env, check=False)
    assert done.returncode != 0
    root_cause = done.stderr.split("Root Cause")[-1]
    assert "rank      : 1 (local_rank: 1)" in root_cause and "SIGKILL" in root_cause
    # rank 0 reports the lost rank, unless torchrun's agent stopped it (SIGTERM) before gloo noticed
    assert "pplvae train: error: rank 0 of 2 lost another rank" in done.stderr or "SIGTERM" in done.stderr
    assert "[rank0]: Traceback" not in done.stderr  # one line from rank 0, not a traceback
    state = load_checkpoint(out / "checkpoint.pt", keys=("model", "epoch", "rng_ranks"))
    assert state["epoch"] == 1
    assert len(pd.read_csv(out / "metrics.csv")) == 1

    torchrun(2, "cli", "evaluate", out, "--num-samples", "20", "--device", "cpu", "--no-progress",
             env={"PPLVAE_DATA_DIR": str(data_dir)})
    two = pd.read_csv(out / EVALUATION)
    one = evaluate_run(out, num_samples=20, device="cpu", data_dir=data_dir)
    assert list(two.columns) == list(one.columns)
    assert int(two["num_data"].iloc[0]) == int(one["num_data"].iloc[0]) == 64
    assert abs(two["log_px"].iloc[0] - one["log_px"].iloc[0]) < 4 * one["log_px_stderr"].iloc[0]
