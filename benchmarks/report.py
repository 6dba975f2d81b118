"""What every benchmark writes beside its numbers: the machine, and tables as markdown."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

import pandas as pd
import pyro
import torch


def machine(device: torch.device) -> dict:
    """The machine and software a measurement was taken on, as a flat dict."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_model() or platform.processor() or platform.machine()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"{device.type}: {name}",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "command": " ".join(["python -m benchmarks." + os.path.basename(sys.argv[0])[:-3], *sys.argv[1:]]),
    }


def parsed_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """The device ``--device name`` names (``auto``: CUDA when present), or the parser's one-line error.

    Raises:
        SystemExit: through ``parser.error`` (exit status 2, usage and message,
            no traceback) for a device torch does not have or a bad name.
    """
    from pplvae.training import resolve_device

    try:
        return resolve_device(name)
    except ValueError as error:
        parser.error(str(error))


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A pipe table of ``frame`` (its index dropped), floats formatted with ``floatfmt``."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else format(value, floatfmt)
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def markdown_machine(info: dict) -> str:
    """The machine dict as a bullet list."""
    return "\n".join(f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}"
                     for key, value in info.items())


def row_line(row: dict, floatfmt: str = ".2f") -> str:
    """One result row as ``key value, key value``, floats formatted: progress lines of a long benchmark."""
    return ", ".join(f"{key} {value:{floatfmt}}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in row.items())
