"""The viewer is safe to run: it serves only files inside the atlas, bounds uploads, never answers 500 to a bad
image, and keeps working under concurrent pages and live analyses. Requests go to a real uvicorn on 127.0.0.1
(raw sockets where an HTTP client would tidy the URL)."""

from __future__ import annotations

import io
import select
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from convscope.web import create_site
from convscope.web.safe import safe_file


def _raw(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send exact request bytes; return (status, response body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(head + body)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[-1]


def _get(port: int, target: str) -> int:
    return _raw(port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())[0]


TRAVERSALS = ["/files/../atlas.sqlite", "/files/%2e%2e/atlas.sqlite", "/files/%252e%252e/atlas.sqlite",
              "/files/..%2fatlas.sqlite", "/files/%2e%2e%2fatlas.sqlite", "/files/%2E%2E/%2E%2E/etc/passwd",
              "/files//etc/passwd", "/files/%2fetc%2fpasswd", "/files/featvis/../../atlas.sqlite",
              "/files/featvis/conv1/..%5c..%5c..%5catlas.sqlite", "/files/featvis/conv1/0.png%00.txt",
              "/static/../../atlas/store.py", "/static/%2e%2e/__init__.py", "/static/..%252f..%252fapp.py",
              "/static//etc/passwd", "/../atlas.sqlite", "//etc/passwd", "/files/atlas.sqlite", "/atlas.sqlite"]


def test_traversal_attempts_get_404_and_real_files_200(server):
    assert _get(server.port, "/files/featvis/conv1/0.png") == 200
    assert _get(server.port, "/static/viewer.css") == 200
    for target in TRAVERSALS:
        assert _get(server.port, target) == 404, target


def test_safe_file_is_what_refuses_them(tiny_atlas):
    assert safe_file(tiny_atlas, "files/featvis/conv1/0.png", top="files") is not None
    for relative in ["files/../atlas.sqlite", "/etc/passwd", "files/%2e%2e/atlas.sqlite", "atlas.sqlite",
                     "files/featvis/conv1/..\\..\\x", "files/.hidden", "files/featvis/conv1/0.png\x00"]:
        assert safe_file(tiny_atlas, relative, top="files") is None, relative


def test_symlinks_leading_out_are_404(atlas_copy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (atlas_copy / "files/featvis/leak.txt").symlink_to(secret)
    (atlas_copy / "files/dir-out").symlink_to(tmp_path)
    (atlas_copy / "files/featvis/inside.png").symlink_to(atlas_copy / "files/featvis/conv1/0.png")
    with TestClient(create_site([atlas_copy], device="cpu")) as client:
        assert client.get("/files/featvis/leak.txt").status_code == 404
        assert client.get("/files/dir-out/secret.txt").status_code == 404
        assert client.get("/files/featvis/inside.png").status_code == 200  # a link that stays inside is fine


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header declares width x height grey pixels (all zero, compressed to almost nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (width + 1) * 64)  # only the first rows: the header is what counts
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_oversize_uploads_get_413_before_the_body_is_read(server):
    limit = server.limits.max_bytes
    head = (f"POST /api/live/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n").encode()
    start = time.monotonic()
    status, body = _raw(server.port, head, b"\x00" * 65536)  # declares 1 GB, sends 64 kB, waits for the answer
    assert status == 413 and b"larger than" in body and time.monotonic() - start < 10

    # no Content-Length (chunked): the server must count while it reads, and answer before the body ends
    piece = b"\x00" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(b"POST /api/live/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        while sent < 20 * limit and not select.select([conn], [], [], 0)[0]:
            try:
                conn.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 4 * limit, f"the server answered only after {sent / 2**20:.0f} MB of a {limit / 2**20:.0f} MB limit"


def test_bad_images_get_a_clear_message_never_a_500(server):
    png = _png(40, 30)
    cases = {
        "not an image of a supported type": b"%PDF-1.4 this is not a picture",
        "declares too many pixels": _bomb(200_000, 200_000),
        "pixels; the limit is": _bomb(8_000, 8_000),
        "damaged or truncated": png[: len(png) // 2],
        "the upload is empty": b"",
    }
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for message, data in cases.items():
            response = client.post("api/live/images", content=data, headers={"Content-Type": "image/png"})
            assert response.status_code == 400 and message in response.json()["error"], (message, response.text)
        good = client.post("api/live/images", files={"file": ("x.png", png, "image/png")})  # multipart works too
        assert good.status_code == 201 and good.json()["width"] == 40


def _wait(client: httpx.Client, job: dict, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        state = client.get(f"api/live/jobs/{job['id']}").json()
        if state["status"] in ("done", "error"):
            return state
        assert time.monotonic() < deadline, f"job {job} did not finish"
        time.sleep(0.05)


def test_live_analyses_run_and_a_failing_one_leaves_the_server_up(server, photo):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        image = client.post("api/live/images", content=Path(photo).read_bytes()).json()["id"]
        jobs = [client.post("api/live/jobs", params={"image": image, "analysis": "predict"}).json(),
                client.post("api/live/jobs", params={"image": image, "analysis": "activations",
                                                     "layer": "nope"}).json(),
                client.post("api/live/jobs", params={"image": image, "analysis": "attribution",
                                                     "method": "gradcam", "target": "Bag"}).json(),
                client.post("api/live/jobs", params={"image": "d0", "analysis": "activations",
                                                     "layer": "conv2"}).json()]
        done = [_wait(client, job) for job in jobs]
        assert done[0]["status"] == "done" and len(done[0]["result"]["predictions"]) == 5
        assert done[1]["status"] == "error" and "nope" in done[1]["error"]  # one clear line, the worker goes on
        assert done[2]["status"] == "done" and done[2]["result"]["target_name"] == "Bag"
        assert done[3]["status"] == "done" and done[3]["result"]["channels"] == 64
        picture = client.get(f"api/live/jobs/{done[2]['id']}/image.png")
        assert picture.status_code == 200 and Image.open(io.BytesIO(picture.content)).width > 0
        bad = client.post("api/live/jobs", params={"image": image, "analysis": "attribution", "method": "magic"})
        assert bad.status_code == 400 and "unknown attribution method" in bad.json()["error"]
        assert client.post("api/live/jobs", params={"image": "u0000", "analysis": "predict"}).status_code == 404


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_concurrent_pages_and_analyses_lose_nothing(server, photo):
    """Six clients at once for a bounded time: every page and file answers 200, every analysis finishes."""
    pages = ["", "layer/conv1", "layer/conv2/unit/3", "api/layer/conv1/unit/0", "files/featvis/conv2/1.png",
             "live", "api/model"]
    methods = ["saliency", "guided", "gradcam", "occlusion", "ig"]
    data = Path(photo).read_bytes()

    def client_run(seed: int) -> list[str]:
        problems = []
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for round_ in range(1):
                image = client.post("api/live/images", content=data).json()["id"]
                jobs = [client.post("api/live/jobs", params={"image": image, "analysis": "attribution",
                                                             "method": methods[(seed + round_) % 5]}).json(),
                        client.post("api/live/jobs", params={"image": image, "analysis": "predict"}).json()]
                for k in range(len(pages)):
                    page = pages[(seed + k) % len(pages)]
                    status = client.get(page).status_code
                    if status != 200:
                        problems.append(f"{page}: {status}")
                for job in jobs:
                    state = _wait(client, job)
                    if state["status"] != "done":
                        problems.append(f"job {state['kind']}: {state['error']}")
        return problems

    client_run(0)  # warm up: the model is loaded, the first pictures drawn
    before = _rss()
    start = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(client_run, range(6)))
    assert time.monotonic() - start < 180
    assert [p for problems in results for p in problems] == []
    grown = _rss() - before
    assert grown < 80 * 2**20, f"memory grew by {grown / 2**20:.0f} MB under load"


@pytest.mark.parametrize("target", ["/api/live/jobs/feedbeef", "/api/live/jobs/feedbeef/image.png"])
def test_unknown_jobs_are_404(server, target):
    assert _get(server.port, target) == 404
