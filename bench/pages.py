"""Viewer page times on the demo atlas: every page served by a real uvicorn on 127.0.0.1, timed from a client.

The target is < 200 ms per page (the server's whole answer, HTML or JSON; the browser's image loads are not
counted). Each page is fetched once to warm up, then `--repeat` times; the median and the 95th percentile are kept.

    python -m bench pages                              # the demo atlases in atlas/ (make demo builds them)
    python -m bench pages --atlas atlas/fashion-cnn --repeat 50 --json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import threading
import time
from pathlib import Path

from ._report import report

TARGET_MS = 200.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pages(folder: Path) -> list[str]:
    """Every kind of page of one atlas: overview, each covered layer with its first and last unit, the live page,
    the t-SNE page and an image page when present, the JSON of each kind, one picture."""
    from convscope.atlas import Atlas

    with Atlas(folder, readonly=True) as atlas:
        urls = ["", "live", "api/model"]
        for row in atlas.layers(selected=True):
            units = atlas.units(row["name"])
            urls += [f"layer/{row['name']}", f"api/layer/{row['name']}"]
            for unit in sorted({units[0], units[-1]}) if units else []:
                urls += [f"layer/{row['name']}/unit/{unit}", f"api/layer/{row['name']}/unit/{unit}"]
        if atlas.result("tsne") is not None:
            urls += ["tsne"]
        sample = atlas.results("dataset_image")
        if sample:
            urls += [f"image/{sample[0].unit}"]
        featvis = atlas.results("featvis")
        if featvis:
            urls += [featvis[0].images["image"]]
    return urls


def _serve(app):
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, sock, f"http://127.0.0.1:{sock.getsockname()[1]}/"


def main(argv: list[str] | None = None) -> int:
    import httpx

    from convscope.web import create_site, find_atlases

    parser = argparse.ArgumentParser(prog="python -m bench pages", description=__doc__.split("\n")[0])
    parser.add_argument("--atlas", nargs="+", default=["atlas"], help="atlas folders, or a folder of atlases "
                                                                      "(default atlas/, the demo's)")
    parser.add_argument("--repeat", type=int, default=20, help="timed fetches per page (default 20)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/pages.json")
    args = parser.parse_args(argv)
    try:
        folders = find_atlases(args.atlas)
    except Exception as error:  # noqa: BLE001 - say what to do, in one line
        print(f"bench pages: {error} (make demo, or `convscope demo --no-serve`, builds the demo atlases)")
        return 2
    rows = []
    for folder in folders:
        server, thread, sock, base = _serve(create_site([folder], device="cpu"))
        try:
            with httpx.Client(base_url=base, timeout=60) as client:
                for url in _pages(folder):
                    response = client.get(url)
                    if response.status_code != 200:
                        raise RuntimeError(f"{folder}/{url}: status {response.status_code}")
                    times = []
                    for _ in range(args.repeat):
                        start = time.perf_counter()
                        response = client.get(url)
                        times.append(1000 * (time.perf_counter() - start))
                    times.sort()
                    rows.append({"atlas": folder.name, "page": "/" + url, "bytes": len(response.content),
                                 "median_ms": round(statistics.median(times), 2),
                                 "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2)})
        finally:
            server.should_exit = True
            thread.join(15)
            sock.close()
    worst = max(rows, key=lambda r: r["median_ms"])
    payload = {"cpu": cpu_model(), "threads": __import__("torch").get_num_threads(), "target_ms": TARGET_MS,
               "repeat": args.repeat, "pages": rows, "worst_median_ms": worst["median_ms"],
               "all_under_target": all(r["median_ms"] < TARGET_MS for r in rows)}
    lines = [f"CPU: {payload['cpu']}", f"{'atlas':<14} {'page':<44} {'median ms':>10} {'p95 ms':>8} {'bytes':>9}"]
    lines += [f"{r['atlas']:<14} {r['page']:<44} {r['median_ms']:>10.1f} {r['p95_ms']:>8.1f} {r['bytes']:>9}"
              for r in rows]
    lines.append(f"slowest median {worst['median_ms']:.1f} ms ({worst['atlas']}{worst['page']}); target < "
                 f"{TARGET_MS:.0f} ms per page: {'met' if payload['all_under_target'] else 'NOT met'}")
    report("pages", payload, save=not args.no_save, as_json=args.json, summary="\n".join(lines))
    return 0 if payload["all_under_target"] else 1
