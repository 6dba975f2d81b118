"""Smoke test of the benchmark script with tiny flags, in a subprocess (as Pyro's tests/test_examples.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def test_marginal_throughput_runs_with_tiny_flags(tmp_path, data_dir):
    out = tmp_path / "throughput.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PPLVAE_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, str(REPO / "benchmarks" / "marginal_throughput.py"), "--num-samples", "20",
           "--num-examples", "10", "--train-size", "200", "--mm-repeats", "2", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    row = pd.read_csv(out).iloc[0]
    assert row["num_samples"] == 20 and row["num_data"] == 10
    assert row["decoder_gflop"] == 2 * (50 * 200 + 200 * 200 + 200 * 784) * 20 * 10 / 1e9
    assert row["decoder_gflops_per_s"] > 0 and row["mm_gflops_per_s"] > 0 and row["peak_memory_mib"] > 0
    assert row["elbo"] <= row["log_px"]
