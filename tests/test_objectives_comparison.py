"""The objectives benchmarks run end to end with tiny flags, in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "objectives_comparison.py"


@pytest.mark.slow
def test_objectives_comparison_smoke(tmp_path, data_dir):
    out = tmp_path / "comparison"
    command = [sys.executable, str(SCRIPT), "--data-dir", str(data_dir), "--train-size", "300",
               "--test-size", "100", "--epochs", "1", "--z-dim", "4", "--hidden-dims", "16",
               "--num-samples", "10", "--eval-size", "20", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 4 and table[["test_elbo", "log_px", "ess_mean", "test_kl", "active_units"]].notna().all().all()
    assert (out / "samples.png").exists()

    variance = [sys.executable, str(BENCHMARKS / "kl_estimator_variance.py"), str(out / "vae"),
                "--data-dir", str(data_dir), "--batch-size", "16", "--draws", "20", "--gradient-draws", "5"]
    result = subprocess.run(variance, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "elbo-analytic" in result.stdout
