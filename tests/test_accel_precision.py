"""The precision switch: explicit choices pass through, bad ones name the choices, bf16 really runs in bfloat16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convscope import OptionError
from convscope.accel import network_precision, resolve_precision


def test_explicit_choices_pass_through_and_bad_ones_name_the_options():
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("bf16") == "bf16"
    with pytest.raises(OptionError, match="auto, float32, bf16"):
        resolve_precision("fp16")


def test_auto_keeps_float64_models_in_their_precision():
    assert resolve_precision("auto", "cpu", torch.float64) == "float32"
    assert resolve_precision("auto", "cpu") in ("float32", "bf16")


def test_bf16_runs_convolutions_in_bfloat16_and_float32_does_not():
    x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with network_precision("bf16", "cpu"):
        low = F.conv2d(x, w)
    with network_precision("float32", "cpu"):
        plain = F.conv2d(x, w)
    assert low.dtype == torch.bfloat16 and plain.dtype == torch.float32
    assert torch.allclose(low.float(), plain, rtol=0.05, atol=0.05 * plain.abs().max().item())


def test_auto_keeps_bf16_only_where_the_network_is_measurably_faster(monkeypatch):
    import time

    from torch import nn

    from convscope import accel
    from convscope.accel import choose_precision, precision

    monkeypatch.setitem(precision._MEASURED, "cpu", 2.0)  # a device whose bf16 is fast
    net = nn.Linear(2, 2)
    seen = []

    def trial_with(cost):
        def trial(choice):
            seen.append(choice)
            time.sleep(cost[choice])

        return trial

    assert choose_precision("auto", net, trial_with({"float32": 0.02, "bf16": 0.005}), "fast") == "bf16"
    assert choose_precision("auto", net, trial_with({"float32": 0.005, "bf16": 0.006}), "slow") == "float32"
    assert seen.count("bf16") == seen.count("float32") == 6  # three interleaved rounds per workload
    assert choose_precision("auto", net, trial_with({"float32": 1, "bf16": 1}), "fast") == "bf16"  # cached
    assert choose_precision("float32", net, trial_with({}), "x") == "float32"  # explicit: nothing measured
    assert choose_precision("auto", net, trial_with({}), "w", work=10_000) == "float32"  # too little arithmetic
    with accel.plain():
        assert choose_precision("auto", net, trial_with({}), "y") == "float32"
    monkeypatch.setitem(precision._MEASURED, "cpu", 1.0)  # a device without fast bf16: nothing measured
    assert choose_precision("auto", nn.Linear(2, 2), trial_with({}), "z") == "float32"
