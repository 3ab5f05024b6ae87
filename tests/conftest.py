"""Shared test set-up: offline, seeded, small thread count so the suite behaves the same on 2-core CI machines."""

from __future__ import annotations

import os

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


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny models: on a busy 2-core machine thread hand-offs cost more than the
    arithmetic (use with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
