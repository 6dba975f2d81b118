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


def test_marginal_throughput_runs_with_tiny_flags(tmp_path, data_dir):
    out = tmp_path / "throughput.csv"
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PPLVAE_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, str(REPO / "benchmarks" / "marginal_throughput.py"), "--num-samples", "20",
           "--num-examples", "10", "--train-size", "200", "--mm-repeats", "2", "--device", "cpu", "--out", str(out),
           "--hand-written"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    row = pd.read_csv(out).iloc[0]
    assert row["num_samples"] == 20 and row["num_data"] == 10
    assert row["decoder_gflop"] == 2 * (50 * 200 + 200 * 200 + 200 * 784) * 20 * 10 / 1e9
    assert row["decoder_gflops_per_s"] > 0 and row["mm_gflops_per_s"] > 0 and row["peak_memory_mib"] > 0
    assert row["mm_timings_during"] >= 1 and row["mm_gflops_per_s_during"] > 0 and row["ratio_to_mm_during"] > 0
    assert row["elbo"] <= row["log_px"]
    assert row["hand_written_seconds"] > 0 and row["speed_vs_hand_written"] > 0
    assert abs(row["hand_written_log_px"] - row["log_px"]) < 20  # same model, K = 20: same ballpark


def test_matmul_reference_times_one_image_and_the_whole_chunk_and_keeps_the_faster(monkeypatch):
    from benchmarks import marginal_throughput

    vae = VAE(VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8,)))
    reference = marginal_throughput.MatmulReference(vae, (50, 3), torch.device("cpu"))
    assert reference.row_counts == [50, 150] and reference.shapes == [(3, 8), (8, 12)]
    assert [a.shape[0] for a in reference.a[150]] == [150, 150]
    assert marginal_throughput.MatmulReference(vae, (50, 1), torch.device("cpu")).row_counts == [50]
    timed = []
    monkeypatch.setattr(reference, "_once", lambda rows: timed.append(rows))
    wall, cpu = reference.rate(3)
    assert timed == [50] * 4 + [150] * 4  # one warm-up and three timed passes per row count
    assert wall > 0 and cpu > 0


def test_marginal_ceiling_times_every_variant_and_restores_the_parts(tmp_path, data_dir):
    from benchmarks import marginal_ceiling

    out = tmp_path / "ceiling.csv"
    table = marginal_ceiling.main(["--num-samples", "20", "--num-examples", "3", "--rounds", "1", "--mm-repeats", "2",
                                   "--threads", str(torch.get_num_threads()), "--data-dir", str(data_dir),
                                   "--out", str(out)])
    assert list(pd.read_csv(out).variant) == list(marginal_ceiling.VARIANTS) == list(table.variant)
    assert (table.seconds > 0).all() and (table.ratio_to_mm > 0).all()
    # The patches are gone afterwards: the estimator and the networks compute real values again.
    vae = VAE(VAEConfig(x_dim=12, z_dim=3, hidden_dims=(8,)))
    x = torch.bernoulli(torch.full((4, 12), 0.4))
    with torch.no_grad():
        result = pplvae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=50)
        assert (result.log_px < 0).all() and (result.bounds[1] <= result.log_px + 1e-6).all()
        h = torch.linspace(-3, 3, 7)
        torch.testing.assert_close(pplvae.networks.Tanh()(h), torch.tanh(h), rtol=0, atol=3e-7)
        body = pplvae.networks.mlp(7, (5,))
        assert body.without_grad() != body.forward  # the sigmoid form is back


def test_marginal_noise_writes_one_row_per_round_of_the_same_estimate(tmp_path, data_dir):
    from benchmarks import marginal_noise

    out = tmp_path / "noise.csv"
    table = marginal_noise.main(["--num-samples", "20", "--num-examples", "3", "--rounds", "3", "--mm-repeats", "2",
                                 "--data-dir", str(data_dir), "--out", str(out)])
    written = pd.read_csv(out)
    assert list(written["round"]) == list(table["round"]) == [0, 1, 2]
    assert (written.seconds > 0).all() and (written.mm_gflops_per_s > 0).all()
    # The ratio is the decoder's rate over torch.mm's: 413,600 flops per sample of the 784-200-200-50 decoder.
    decoder_gflops = 413_600 * 20 * 3 / 1e9 / written.seconds
    assert written.ratio_to_mm.to_numpy() == pytest.approx((decoder_gflops / written.mm_gflops_per_s).to_numpy())
    assert written.ms_per_image.to_numpy() == pytest.approx((written.seconds / 3 * 1e3).to_numpy())


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
                        "--warmup", "1", "--train-size", "64", "--threads", "1", "--device", "cpu",
                        "--data-dir", str(data_dir), "--out", str(tmp_path))
    assert "pplvae / torch" in out
    summary = pd.read_csv(tmp_path / "speed.csv")
    assert set(summary.contender) == {"pplvae", "torch", "torch, Adam defaults", "pyro recipe"}
    assert (summary.wall_ms > 0).all()
    assert (tmp_path / "speed.md").exists() and (tmp_path / "speed.png").exists()


def test_quality_script_writes_its_tables(tmp_path, data_dir):
    k = "8" if hasattr(pplvae, "log_marginal_likelihood") else "0"
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
