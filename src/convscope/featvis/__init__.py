"""Feature visualization: synthesize the images a unit, channel, layer or class responds to most.

    from convscope.featvis import render, channel
    vis = render("torchvision:mobilenet_v2@IMAGENET1K_V1", channel("features.10", 7), octaves=3)
    vis.save("unit.png")

`render` is the one entry point: an objective, a parameterization (`param`, `init`) and a `Schedule` (steps,
optimizer, transforms, octaves, tiles, chunks, seed; its fields are keywords of `render` too), plus `precision=`
("auto" | "float32" | "bf16", see `convscope.accel`). Objectives (`neuron`, `channel`, `layer`, `class_logit`,
`direction`, `diversity`, `custom`; small `Term` classes) add, subtract and scale; parameterizations, transforms,
regularizers and update rules are small pieces in their own modules. `class_model` (Simonyan et al.) and `dream` (DeepDream) are recipes over
`render`; `invert`, `adversarial`, `invariances` and `evolution` are the other classic experiments.
"""

from .adversarial import Adversarial, adversarial
from .classic import class_model, dream
from .evolution import Evolution, evolution
from .invariances import Invariances, invariances
from .inversion import Inversion, invert
from .objectives import (
    OUTPUT,
    Objective,
    Term,
    as_objective,
    channel,
    class_logit,
    custom,
    direction,
    diversity,
    layer,
    neuron,
)
from .params import FourierParam, Parameterization, PixelParam
from .regularizers import (
    L1,
    L2,
    Blur,
    ClipContribution,
    ClipNorm,
    ClipRange,
    ColorPenalty,
    Decay,
    EdgePenalty,
    TotalVariation,
    sharpness,
)
from .render import render
from .schedule import Schedule
from .result import Visualization
from .transforms import Transforms, jitter, pad, rotate, scale, standard_transforms

__all__ = [
    "OUTPUT", "Objective", "Term", "as_objective", "neuron", "channel", "layer", "class_logit", "direction",
    "diversity", "custom", "Schedule",
    "Parameterization", "PixelParam", "FourierParam",
    "Transforms", "pad", "jitter", "scale", "rotate", "standard_transforms",
    "L1", "L2", "TotalVariation", "EdgePenalty", "ColorPenalty", "sharpness", "ClipRange", "Decay", "Blur",
    "ClipNorm", "ClipContribution",
    "render", "Visualization", "class_model", "dream",
    "invert", "Inversion", "adversarial", "Adversarial", "invariances", "Invariances", "evolution", "Evolution",
]
