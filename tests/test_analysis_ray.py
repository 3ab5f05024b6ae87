"""The Ray engine on a local Ray with 2 workers: its merged result (top-k, statistics, pooled codes) equals the local
engine's, bit for bit, also when it resumes a checkpoint the local engine started."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convscope import analysis, data, hooks
from convscope.models import load

ray = pytest.importorskip("ray")
FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")


def test_ray_equals_local_and_resumes_a_local_checkpoint(local_ray, tmp_path):
    spec = load("convscope:fashion-cnn")
    fashion = data.resolve("fashion-mnist")
    options = dict(k=9, limit=320, batch_size=32, shard_size=64, codes="mean", code_layers=["conv2", "fc2:input"])
    local = analysis.scan(spec, fashion, ["conv1", "conv2", "fc1"], **options)
    seen = []
    remote = analysis.scan(spec, fashion, ["conv1", "conv2", "fc1"], engine="ray", progress=lambda d, t: seen.append(d),
                           **options)
    assert remote.to_dict() == local.to_dict()
    _same_codes(remote.codes, local.codes)
    assert seen[-1] == 320 and seen == sorted(seen)
    assert hooks.hook_count(spec.module) == 0

    path = tmp_path / "scan.ckpt"

    def stop(done: int, total: int) -> None:
        if done > 130:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analysis.scan(spec, fashion, ["conv1", "conv2", "fc1"], checkpoint=path, progress=stop, **options)
    resumed = analysis.scan(spec, fashion, ["conv1", "conv2", "fc1"], engine="ray", checkpoint=path, **options)
    assert resumed.to_dict() == local.to_dict()
    _same_codes(resumed.codes, local.codes)


def _same_codes(a, b):
    assert a.layers == b.layers and torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
    for name in a.layers:
        assert torch.equal(a.codes[name], b.codes[name]), name
