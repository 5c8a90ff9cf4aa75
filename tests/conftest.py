"""Shared fixtures: generated image trees (no network) and the shared clothing dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASET = ROOT.parent / "shared" / "datasets" / "clothing-small"


def make_image(path: Path, size=(40, 30), seed=0, mode="RGB", fmt=None, pattern=None) -> Path:
    """Write a small image with a per-seed pattern; `pattern` picks a class-like look."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 60, size=(h, w, 3))
    if pattern is not None:  # classes differ by stripe direction and colour: learnable
        stripes = ((xx if pattern % 2 else yy) // (3 + pattern)) % 2
        base[..., pattern % 3] += 180 * stripes
    array = np.clip(base, 0, 255).astype(np.uint8)
    image = Image.fromarray(array).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """3 classes x 12 learnable images, one folder per class."""
    root = tmp_path / "tiny"
    for c, name in enumerate(["cat", "dog", "fox"]):
        for i in range(12):
            make_image(root / name / f"{name}_{i:02d}.png", size=(48, 40), seed=100 * c + i, pattern=c)
    return root


@pytest.fixture
def shared_dataset() -> Path:
    if not SHARED_DATASET.is_dir():
        pytest.skip(f"the shared clothing dataset is not at {SHARED_DATASET}")
    return SHARED_DATASET


def run_module(module: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout=600):
    """Run `python -m module args` as a user would; return the CompletedProcess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def path_overrides(tmp_path: Path) -> list[str]:
    """Overrides that keep every output of a run inside tmp_path."""
    return [f"paths.split_dir={tmp_path}/split", f"paths.reports_dir={tmp_path}/reports",
            f"paths.models_dir={tmp_path}/models", f"hydra.run.dir={tmp_path}/hydra",
            f"hydra.sweep.dir={tmp_path}/multirun", f"data.download_dir={tmp_path}/downloads"]
