"""An atlas build killed (kill -9) or interrupted (Ctrl-C, a real SIGINT) at seeded random points, then run again,
ends identical to an uninterrupted build: the same database content (apart from timings and timestamps) and the same
image bytes. The interrupted runs are `convscope atlas build` subprocesses; the clean build and the last resume run
in this process."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import torch

from convscope.atlas import Atlas, build, check


def _stored(folder) -> int:
    db = folder / "atlas.sqlite"
    if not db.is_file():
        return 0
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT count(*) FROM results").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # the tables are being created
        return 0


def _interrupt(command, env, folder, after: int, how: signal.Signals, pause: float, log) -> int:
    """Start a build, wait until it has stored `after` results, wait `pause` s more, send `how`; return the count."""
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        while _stored(folder) < after:
            assert process.poll() is None, f"the build ended before it was interrupted (exit {process.returncode})"
            assert time.monotonic() < deadline, "the build made no progress"
            time.sleep(0.01)
        time.sleep(pause)
        process.send_signal(how)
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == (130 if how == signal.SIGINT else -signal.SIGKILL), code
    return _stored(folder)


def test_killed_and_interrupted_builds_resume_to_the_clean_atlas(tiny_atlas, tiny_config, tiny_args, tmp_path):
    with Atlas(tiny_atlas, readonly=True) as clean:
        total = len(clean.results())
        expected = clean.content()
        images = [row[4] for row in clean.image_rows()]
    folder = tmp_path / "resumed"
    command = [sys.executable, "-m", "convscope.cli", "--device", "cpu", *tiny_args, "-o", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as the clean build: one torch thread
    rng = random.Random(20261130)
    # the SIGINT no later than 3/4 of the way: the last stages store their rows fast, and a signal that arrives
    # after the build finished interrupts nothing (seen as exit 0 on a loaded machine)
    points = [(signal.SIGKILL, rng.randint(2, total // 3)), (signal.SIGINT, rng.randint(total // 2, total * 3 // 4))]
    with open(tmp_path / "build.log", "wb") as log:
        for how, after in points:
            left = _interrupt(command, env, folder, after, how, rng.uniform(0.0, 0.05), log)
            assert after <= left < total, f"the {how.name} came too late to interrupt anything ({left}/{total})"
            report = check(folder)
            assert report.ok, report.lines()  # never corrupt, whatever the moment of the kill
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the last run in this process, where the clean build ran (each subprocess costs seconds of imports)
        build(tiny_config, folder, device="cpu")
    finally:
        torch.set_num_threads(threads)
    report = check(folder)
    assert report.ok and not report.warnings, report.lines()
    with Atlas(folder, readonly=True) as resumed:
        got = resumed.content()
        runs = [status for (status,) in resumed.conn.execute("SELECT status FROM runs ORDER BY id")]
    assert runs == ["running", "interrupted", "finished"]  # the kill -9 run never got to say anything
    for table in expected:
        assert got[table] == expected[table], f"table {table} differs after resuming"
    for path in images:
        assert (folder / path).read_bytes() == (tiny_atlas / path).read_bytes(), path


def test_a_build_stopped_in_the_dataset_pass_resumes_from_its_checkpoint(tiny_config, tmp_path, monkeypatch):
    """Ctrl-C in the middle of the dataset scan keeps the shards already merged: the next build scans only the rest,
    stores what an uninterrupted build stores, and removes the checkpoint."""
    from dataclasses import replace

    from convscope.analysis import _engine
    from convscope.atlas import _analysis

    monkeypatch.setattr(_analysis, "SHARD", 64)  # the scan's 96 items in two shards (batches of 64)
    shards: list[int] = []
    run = _engine.ShardRunner.run

    def counted(self, shard, *args, **kwargs):
        shards.append(shard)
        return run(self, shard, *args, **kwargs)

    monkeypatch.setattr(_engine.ShardRunner, "run", counted)
    config = replace(tiny_config, stages=("scan",))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clean = tmp_path / "clean"
        build(config, clean, device="cpu")
        assert shards == [0, 1] and not (clean / _analysis.CHECKPOINT).exists()

        def stop_in_the_last_shard(done: float, total: int, what: str) -> None:
            # the scan's share is 0.5 of a unit; 0.5 = every batch read, before the last shard is merged
            if what == "dataset scan" and done >= 0.5 and done < 1:
                raise KeyboardInterrupt

        folder = tmp_path / "stopped"
        shards.clear()
        try:
            build(config, folder, device="cpu", progress=stop_in_the_last_shard)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError("the build was not interrupted")
        saved = torch.load(folder / _analysis.CHECKPOINT, map_location="cpu", weights_only=True)
        assert saved["done"] == 1 and shards == [0, 1]
        shards.clear()
        build(config, folder, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert shards == [1], shards  # the first shard came from the checkpoint
    assert not (folder / _analysis.CHECKPOINT).exists()
    with Atlas(clean, readonly=True) as a, Atlas(folder, readonly=True) as b:
        expected, got = a.content(), b.content()
    for table in expected:
        assert got[table] == expected[table], f"table {table} differs after resuming the scan"


def test_a_stale_scan_checkpoint_is_replaced(tiny_config, tmp_path):
    """A checkpoint the scan cannot use (here: not a checkpoint at all) does not stop the build: the pass runs from
    the start, the report says so, and the file is gone at the end."""
    from dataclasses import replace

    from convscope.atlas import _analysis

    config = replace(tiny_config, stages=("scan",), units=2)
    folder = tmp_path / "stale"
    folder.mkdir()
    (folder / _analysis.CHECKPOINT).write_bytes(b"not a checkpoint")
    report = build(config, folder, device="cpu")
    assert report.stored["scan"] == 4  # two units in each of the two layers
    assert any(_analysis.CHECKPOINT in note for note in report.notes), report.notes
    assert not (folder / _analysis.CHECKPOINT).exists()
