"""Every example script runs end to end with tiny flags, as a user would run it."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, *args, data_dir=None, cwd=None):
    command = [sys.executable, str(EXAMPLES / name), *args]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_vae_mnist(tmp_path, data_dir):
    out = run_example("vae_mnist.py", "--epochs", "1", "--train-size", "500", "--hidden", "32",
                      "--device", "cpu", "--out", str(tmp_path), data_dir=data_dir)
    assert "test ELBO" in out and (tmp_path / "manifold.png").exists()


def test_vae_freyface(tmp_path):
    out = run_example("vae_freyface.py", "--epochs", "1", "--hidden", "32", "--device", "cpu",
                      "--out", str(tmp_path))
    assert "Frey Face test ELBO" in out and (tmp_path / "metrics.csv").exists()
