"""Session fixtures of the atlas and viewer tests: one tiny atlas built once, a viewer serving it on 127.0.0.1,
and a headless Chromium. Everything here is torn down at the end of the session (no server or browser survives)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from convscope.atlas import BuildConfig, build

# fashion-cnn, both conv layers, 5 units each in chunks of 3 (so a chunk is split by a resume), few steps, an
# evolution strip from the untrained architecture to the trained model, a small dataset sample, and a scan of the
# first 96 test images (top-4 per unit), predictions and a t-SNE grid of the sample, probes on 200 images.
TINY = BuildConfig("convscope:fashion-cnn", data="fashion-mnist", layers=("conv1", "conv2"), units=5, chunk=3,
                   steps=6, checkpoints=("convscope:small-cnn", "convscope:fashion-cnn"), samples=12, k=4,
                   scan_limit=96, probe_limit=200)

# the same options as command-line arguments (the kill/resume test runs the CLI in subprocesses)
TINY_ARGS = ["atlas", "build", TINY.model, "--data", "fashion-mnist", "--layers", "conv1,conv2",
             "--units-per-layer", "5", "--chunk", "3", "--steps", "6", "--samples", "12", "--k", "4", "--scan-limit", "96",
             "--probe-limit", "200",
             "--checkpoints", *TINY.checkpoints]


@pytest.fixture(scope="session")
def tiny_config() -> BuildConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_args() -> list[str]:
    return list(TINY_ARGS)


@pytest.fixture(scope="session")
def tiny_atlas(tmp_path_factory) -> Path:
    """The tiny atlas, built once in this process with one torch thread (as the kill/resume subprocesses run)."""
    folder = tmp_path_factory.mktemp("atlas") / "tiny"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build(TINY, folder, device="cpu")
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.fixture
def atlas_copy(tiny_atlas, tmp_path) -> Path:
    """A private copy of the tiny atlas, for tests that change it."""
    target = tmp_path / "copy"
    shutil.copytree(tiny_atlas, target)
    return target


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Served:
    """A uvicorn server in a thread of this process, on a socket bound to 127.0.0.1."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = _free_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the viewer did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()
        assert not self.thread.is_alive(), "the viewer did not stop"


@pytest.fixture(scope="session")
def serving():
    """`serving(app)` -> a started `Served` (the caller stops it)."""
    return Served


@pytest.fixture(scope="session")
def server(tiny_atlas):
    from convscope.web import UploadLimits, create_site

    limits = UploadLimits(max_bytes=2 * 2**20)  # small, so the oversize-upload test has little to send
    served = Served(create_site([tiny_atlas], device="cpu", limits=limits))
    served.limits = limits
    yield served
    served.stop()


@pytest.fixture(scope="session")
def photo(tmp_path_factory) -> Path:
    """A real photo (scikit-image's cat) as a PNG file."""
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through Playwright. Missing Chromium or Playwright FAILS (setup.sh installs both)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run scripts/setup.sh (pip install -e '.[test]')")
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is missing: run scripts/setup.sh, or `apt-get install chromium` (Debian's package; "
                    "never `playwright install`)")
    args = ["--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run",
            "--disable-sync"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            yield chromium
        finally:
            chromium.close()
