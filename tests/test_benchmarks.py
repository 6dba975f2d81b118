"""The benchmark scripts run end to end with tiny settings (in a subprocess, as Pyro's
tests/test_examples.py), and the speed benchmark's floor computes pplvae's estimator.

No timing is asserted: speed is measured by ``python -m benchmarks.speed``, not tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import pyro
import torch
from pyro.infer import Trace_ELBO

import pplvae
from benchmarks.torch_vae import load_into, torch_vae_like
from benchmarks.torch_vae import log_marginal_likelihood as hand_written_log_px
from pplvae import VAE, VAEConfig

REPO = Path(__file__).resolve().parents[1]


def test_marginal_throughput_times_both_estimators_on_the_same_model(tmp_path, data_dir):
    out = tmp_path / "throughput.csv"
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PPLVAE_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, "-m", "benchmarks.marginal_throughput", "--num-samples", "400", "--num-examples", "4",
           "--threads", "1", "--rounds", "2", "--floor", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out)
    assert list(table["round"]) == [0, 1] and (table.num_data == 4).all()
    # the same model and images: the two estimates agree within Monte Carlo error (K = 400, 4 images)
    assert ((table.pplvae_log_px - table.hand_written_log_px).abs() < 3).all()
    assert "pplvae faster" in done.stdout
    assert "speed_vs_hand_written_decoder_only" in done.stdout  # the decoder-alone floor is reported beside them
    assert (table.speed_vs_hand_written_decoder_only > 0).all()  # and timed beside them


def test_hand_written_estimator_agrees_with_pplvae_within_monte_carlo_error():
    """benchmarks.torch_vae.log_marginal_likelihood, the reference run, estimates the same log p(x)."""
    pyro.set_rng_seed(0)
    vae = VAE(VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8,)))
    x = torch.bernoulli(torch.full((20, 12), 0.4))
    ours = pplvae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=2000).log_px
    theirs = hand_written_log_px(torch_vae_like(vae), x, num_samples=2000, chunk_samples=700)
    assert theirs.shape == (20,)
    diff = theirs.double() - ours  # (20,) paired by datapoint
    assert abs(diff.mean().item()) < max(0.02, 4 * diff.std().item() / 20**0.5)


def run_benchmark(name, *args):
    command = [sys.executable, "-m", f"benchmarks.{name}", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_hand_written_loss_is_trace_elbo_on_the_same_weights_and_noise():
    vae = VAE(VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8, 6)))
    twin = torch_vae_like(vae)
    x = torch.bernoulli(torch.full((5, 12), 0.4))
    pyro.set_rng_seed(3)
    expected = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x) / 5
    pyro.set_rng_seed(3)
    torch.testing.assert_close(twin(x), expected, rtol=1e-5, atol=1e-5)


def test_weights_round_trip_between_pplvae_and_the_hand_written_vae():
    vae = VAE(VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8,)))
    twin = torch_vae_like(vae)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
    other = VAE(vae.config)
    load_into(other, twin)
    state = other.state_dict()
    for name, value in twin.state_dict().items():
        torch.testing.assert_close(state[name], value, msg=name)


def test_speed_script_writes_its_tables(tmp_path, data_dir):
    out = run_benchmark("speed", "--nets", "burda", "--batch-sizes", "8", "--steps", "2", "--repeats", "2",
                        "--warmup", "1", "--train-size", "64", "--threads", "1", "--device", "cpu", "--no-compile",
                        "--data-dir", str(data_dir), "--out", str(tmp_path))
    assert "pplvae / torch" in out
    summary = pd.read_csv(tmp_path / "speed.csv")
    assert set(summary.contender) == {"pplvae", "torch", "torch, Adam defaults", "pyro recipe"}
    ratios = summary[summary.contender == "pplvae"].ratio  # the within-repeat ratio to the floor, as reported
    assert len(ratios) == 1 and 0.2 < ratios.item() < 20
    assert (tmp_path / "speed.md").exists() and (tmp_path / "speed.png").exists()


def test_speed_script_refuses_cuda_graphs_without_a_gpu_in_one_line(tmp_path):
    command = [sys.executable, "-m", "benchmarks.speed", "--device", "cpu", "--compile-mode", "reduce-overhead",
               "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "runs the loss as CUDA graphs, which need a GPU; on cpu" in result.stderr
    assert not any(tmp_path.iterdir())  # refused before anything is measured or written



@pytest.mark.parametrize("script", ["speed", "marginal_throughput", "quality"])
def test_benchmark_scripts_refuse_an_unknown_device_in_one_line(script, tmp_path):
    command = [sys.executable, "-m", f"benchmarks.{script}", "--device", "tpu0", "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Unknown device 'tpu0'" in result.stderr.splitlines()[-1]
    assert not any(tmp_path.iterdir())  # refused before anything is measured or written

def test_quality_script_writes_its_tables(tmp_path, data_dir):
    k = "8"
    out = run_benchmark("quality", "--schedule", "constant", "--epochs", "1", "--batch-size", "50",
                        "--train-size", "200", "--test-size", "20", "--num-samples", k,
                        "--freyface-epochs", "1", "--device", "cpu", "--data-dir", str(data_dir),
                        "--out", str(tmp_path))
    assert "Frey Face" in out
    frame = pd.read_csv(tmp_path / "quality.csv")
    assert list(frame.model) == ["pplvae", "hand-written PyTorch", "pplvae"]
    # Same weights, data order and noise: the two MNIST models end (almost) where they started together.
    assert abs(frame["test ELBO"][0] - frame["test ELBO"][1]) < 0.1
    assert (tmp_path / "quality.md").exists() and (tmp_path / "quality.png").exists()


def test_trace_once_script_runs(data_dir):
    out = run_benchmark("trace_once", "--batch-size", "4", "--steps", "2", "--repeats", "1", "--threads", "1",
                        "--no-compile", "--data-dir", str(data_dir))
    assert "replayed" in out and "pplvae" in out


@pytest.mark.slow
def test_distributed_throughput_measures_one_and_two_processes(tmp_path, data_dir):
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PPLVAE_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, "-m", "benchmarks.distributed_throughput", "--steps", "3", "--warmup", "1",
           "--repeats", "1", "--train-size", "512", "--hidden-dims", "16", "--z-dim", "2", "--out", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    table = pd.read_csv(tmp_path / "distributed_throughput.csv")
    assert list(table.processes) == [1, 2] and list(table.global_batch) == [128, 256]
    # one repeat: images per second x seconds per step is the global batch of one step
    assert ((table.images_per_second * table.ms_per_step / 1000 - table.global_batch).abs() < 1e-6).all()
    assert (table.images_per_second > 0).all() and table.scaling_efficiency.iloc[0] == 1.0
    assert "--nproc_per_node=N -m pplvae train" in done.stdout
