"""`--engine ray`: the tiny atlas built with its dataset scan and its render chunks as Ray tasks (on the session's
local Ray, 2 workers) equals the one the local engine built, row for row and byte for byte; and a Ray build that
was stopped part-way is finished by the local engine into the same atlas."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from convscope.atlas import Atlas, build, check

pytest.importorskip("ray")


def _same_atlas(folder, reference) -> None:
    with Atlas(reference, readonly=True) as clean, Atlas(folder, readonly=True) as other:
        expected, got = clean.content(), other.content()
        images = [row[4] for row in clean.image_rows()]
    assert set(got) == set(expected)
    for table in expected:
        assert got[table] == expected[table], f"table {table} differs"
    for path in images:
        assert (folder / path).read_bytes() == (reference / path).read_bytes(), path


def test_a_ray_build_equals_the_local_build(local_ray, tiny_atlas, tiny_config, tmp_path):
    folder = tmp_path / "ray"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the driver's share of the work, as the local build ran it
    try:  # first only the renders and the scan on Ray, then everything else: the atlas resumes across engines
        part = build(replace(tiny_config, engine="ray", stages=("featvis", "scan")), folder, device="cpu")
        rest = build(tiny_config, folder, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert part.stored["featvis"] == 10 and part.stored["scan"] == 10
    assert rest.already["featvis"] == rest.already["scan"] == 10 and rest.stored["featvis"] == rest.stored["scan"] == 0
    assert check(folder).ok
    _same_atlas(folder, tiny_atlas)
    assert local_ray.is_initialized()  # a Ray the build did not start is left running
