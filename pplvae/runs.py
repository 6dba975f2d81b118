"""A run folder: ``config.json``, ``checkpoint.pt``, ``metrics.csv`` and pictures, and loading it back."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from pplvae.checkpoint import load_checkpoint
from pplvae.data import ImageData, load_dataset
from pplvae.models import build_model
from pplvae.training import CHECKPOINT, CONFIG, METRICS, resolve_device


@dataclass
class Run:
    """A trained run loaded back: the model with its last checkpoint's weights.

    Attributes:
        run_dir: the folder.
        model: the model/guide pair, in eval mode, on the chosen device.
        config: the saved config: ``{"model": ..., "data": ..., "train": ...}``.
        metrics: the per-epoch metrics table.
        epoch: epochs trained.
    """

    run_dir: Path
    model: nn.Module
    config: dict
    metrics: pd.DataFrame
    epoch: int

    def load_data(
        self, data_dir: str | os.PathLike | None = None, download: bool = False
    ) -> ImageData:
        """The run's data set (same name, binarization and sizes), on the model's device."""
        data = dict(self.config["data"])
        device = next(self.model.parameters()).device
        return load_dataset(data.pop("dataset"), data_dir=data_dir, download=download, device=device, **data)


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "auto") -> Run:
    """Load the model of a run folder written by ``pplvae train`` / :func:`pplvae.fit`.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``checkpoint.pt``.
    """
    run_dir = Path(run_dir)
    device = resolve_device(device)
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
    config = state.get("config") or json.loads((run_dir / CONFIG).read_text())
    model = build_model(**config["model"]).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    metrics = pd.read_csv(run_dir / METRICS) if (run_dir / METRICS).exists() else pd.DataFrame()
    return Run(run_dir, model, config, metrics, state["epoch"])
