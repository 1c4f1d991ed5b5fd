"""Provenance saved beside every result: config, git revision, package versions, host."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from cardioclr import __version__
from cardioclr.atomic import write_json, write_text

_PACKAGES = ("torch", "monai", "lightning", "numpy", "scipy", "scikit-learn", "pandas",
             "nibabel", "pydicom", "matplotlib")


def git_revision() -> str:
    """The git commit of the cardioclr checkout (with ``+dirty`` if modified), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_info() -> dict[str, Any]:
    """Versions of Python, cardioclr and the main packages, the git revision and the hardware."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "cardioclr": __version__,
        "git_revision": git_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    # Only when torch is already loaded: importing it costs ~1 s that prepare does not need.
    torch = sys.modules.get("torch")
    try:
        info["cuda_devices"] = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                                if torch is not None else [])
    except Exception:  # noqa: BLE001 - provenance must never break a run
        info["cuda_devices"] = []
    return info


def to_plain(config: Any) -> Any:
    """Dataclasses, paths and tuples -> plain YAML/JSON types."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {str(k): to_plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_plain(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config


def save_run_info(out_dir: str | os.PathLike[str], config: Any) -> None:
    """Write ``config.yaml`` and ``versions.json`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(to_plain(config), sort_keys=False))
    write_json(out / "versions.json", environment_info())
