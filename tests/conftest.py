"""Shared test set-up: offline, seeded, small thread count so the suite behaves the same on 2-core CI machines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("CONVSCOPE_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def fashion_available() -> bool:
    return os.path.exists(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"))


def image_folder(root: Path, classes: tuple[str, ...], per_class: int, size: int, broken: str) -> Path:
    """ROOT/CLASS/K.png random RGB images (seeded), and the file `broken` (relative to root) made unreadable."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in classes:
        (root / label).mkdir()
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / label / f"{k}.png")
    (root / broken).write_bytes(b"\x89PNG broken")
    return root


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny models: on a busy 2-core machine thread hand-offs cost more than the
    arithmetic (use with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the test session (the scan's and the atlas's Ray tests share it): 2 workers, no dashboard;
    workers import this checkout's convscope."""
    ray = pytest.importorskip("ray")
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()
