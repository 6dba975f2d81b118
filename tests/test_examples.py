"""Every example script runs end to end with tiny flags, as a user would run it."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, *args, data_dir=None, cwd=None):
    command = [sys.executable, str(EXAMPLES / name), *args]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("name, flag", [
    ("vae_mnist.py", "--epochs"), ("vae_freyface.py", "--lr"), ("cvae_mnist.py", "--num-samples"),
    ("cvae_quadrants.py", "--num-samples"), ("hvae_mnist.py", "--num-samples"), ("conv_vae_mnist.py", "--num-samples"),
    ("m2_semisupervised.py", "--num-samples"),
])
def test_examples_refuse_a_size_of_zero_before_any_work(tmp_path, name, flag):
    """A count of 0 (K = 0 would fail only after training) is a one-line usage error, exit status 2."""
    result = subprocess.run([sys.executable, str(EXAMPLES / name), flag, "0"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert f"argument {flag}: must be a positive" in last_line and last_line.endswith("got '0'")
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["vae_freyface.py", "cvae_mnist.py", "cvae_quadrants.py", "hvae_mnist.py",
                                  "conv_vae_mnist.py", "m2_semisupervised.py"])
def test_examples_refuse_an_out_folder_that_holds_files_before_any_work(tmp_path, name):
    """Run twice into one --out, the second run stops at parse time (fit would stop only after loading the data)."""
    out = tmp_path / "earlier-run"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch\n1\n")
    result = subprocess.run([sys.executable, str(EXAMPLES / name), "--out", str(out)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert "argument --out:" in last_line and "already exists and is not empty" in last_line
    assert "Traceback" not in result.stderr
    assert [p.name for p in tmp_path.rglob("*")] == ["earlier-run", "metrics.csv"]  # nothing written, nothing lost


def test_an_example_checks_its_default_out_folder_too(tmp_path):
    """Rerunning an example as documented, without --out, is refused when the default folder holds a run."""
    default = tmp_path / "runs" / "mnist-hvae"
    default.mkdir(parents=True)
    (default / "checkpoint.pt").write_bytes(b"")
    result = subprocess.run([sys.executable, str(EXAMPLES / "hvae_mnist.py")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "'runs/mnist-hvae' already exists and is not empty" in result.stderr


def test_m2_refuses_a_negative_alpha(tmp_path):
    """alpha weighs the classification term of Kingma et al.'s eq. (9): 0 switches it off, below 0 is refused."""
    result = subprocess.run([sys.executable, str(EXAMPLES / "m2_semisupervised.py"), "--alpha", "-1"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("argument --alpha: must be a finite number >= 0, got '-1'")
    assert not any(tmp_path.iterdir())


def test_vae_mnist(tmp_path, data_dir):
    out = run_example("vae_mnist.py", "--epochs", "1", "--train-size", "500", "--hidden", "32",
                      "--device", "cpu", "--out", str(tmp_path), data_dir=data_dir)
    assert "test ELBO" in out and (tmp_path / "manifold.png").exists()


def test_vae_freyface(tmp_path):
    out = run_example("vae_freyface.py", "--epochs", "1", "--hidden", "32", "--device", "cpu",
                      "--out", str(tmp_path))
    assert "Frey Face test ELBO" in out and (tmp_path / "metrics.csv").exists()
