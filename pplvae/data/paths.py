"""Where data sets live: an explicit folder, ``$PPLVAE_DATA_DIR``, or a per-user cache."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "PPLVAE_DATA_DIR"


class DataNotFoundError(FileNotFoundError):
    """A data set's files are missing or unreadable in every folder tried.

    The message names each folder tried and the two ways to fix it: point at a
    folder that holds the files, or allow a download.
    """


def cache_dir() -> Path:
    """The per-user cache folder, ``$XDG_CACHE_HOME/pplvae`` (default ``~/.cache/pplvae``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pplvae"


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """Folders to look in, in order, each with where it came from.

    An explicit ``data_dir`` is the only candidate when given. Otherwise the
    folder named by ``$PPLVAE_DATA_DIR`` (when set) comes first, then the
    per-user cache folder.

    Returns:
        list of ``(folder, origin)`` pairs, ``origin`` a short human-readable
        phrase such as ``"$PPLVAE_DATA_DIR"``.
    """
    if data_dir is not None:
        return [(Path(data_dir).expanduser(), "the data_dir argument / --data-dir")]
    found = []
    if os.environ.get(ENV_VAR):
        found.append((Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"))
    found.append((cache_dir(), "the per-user cache"))
    return found


def not_found_message(name: str, tried: list[tuple[Path, str, str]]) -> str:
    """The error text for a data set found in none of ``tried`` = [(folder, origin, why)]."""
    lines = [f"Could not load the {name} data set. Folders tried:"]
    lines += [f"  - {folder} (from {origin}): {why}" for folder, origin, why in tried]
    lines += [
        "Fix it in one of two ways:",
        f"  1. point at a folder that holds the files: --data-dir DIR or {ENV_VAR}=DIR",
        "  2. allow a download (needs internet): --download, or download=True",
    ]
    return "\n".join(lines)
