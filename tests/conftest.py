"""Shared fixtures: Pyro state reset per test, and the real data sets from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pytest

import pplvae  # noqa: F401  (turns on module-local params)
from pplvae.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _pyro_state():
    """Fresh parameter store, validation on, a fixed seed: no state leaks between tests."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield


def _data_dir() -> Path:
    folder = Path(os.environ.get("PPLVAE_DATA_DIR", SHARED_DATA))
    if not (folder / "MNIST" / "raw").is_dir():
        message = f"real MNIST not found under {folder}; set PPLVAE_DATA_DIR or put ../shared/data beside the repo"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI=true: tests that need the data must run, not skip)")
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding ``MNIST/raw`` (``../shared/data`` by default)."""
    return _data_dir()


@pytest.fixture(scope="session")
def mnist(data_dir):
    """Real MNIST, binarized for Bernoulli likelihoods, on the CPU (read once per session)."""
    return load_dataset("mnist", data_dir)
