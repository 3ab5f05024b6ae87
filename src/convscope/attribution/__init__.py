"""Attribution: which parts of an input made the network say what it said.

Every method has one call shape, `method(model, inputs, target=None, **options) -> Attribution`:

- `model`: a `ModelSpec`, an `nn.Module` or a model string; it is left exactly as it was (training flags,
  `requires_grad`, parameters, no hook left), and the input's `.grad` is never touched.
- `inputs`: (B, C, H, W) normalized model inputs (`spec.preprocess(image)` for a file).
- `target`: None (each input's predicted class), a class index or list of indices (the pre-softmax logit), a class
  name ("tabby"), a unit "LAYER:CH" / "LAYER:CH@ROW,COL" (explains a hidden unit), or a callable on the output.

Methods: `saliency`, `deconvnet`, `guided_backprop`, `gradcam`, `guided_gradcam`, `smoothgrad`,
`integrated_gradients`, `occlusion`. `METHODS` maps their short names ("saliency", "deconvnet", "guided",
"gradcam", "guided-gradcam", "smoothgrad", "ig", "occlusion") to them. `evaluate` holds the trust checks:
deletion/insertion curves and the model-randomization sanity check.

Grad-CAM and the deletion/insertion scores run the network with its eval-mode BatchNorms folded into the
convolutions of a private working copy (cached while the weights are unchanged; ~1e-7 relative difference in
float32). Inside `with no_folding():` (the same switch as `convscope.accel.plain()`) every method runs the model
exactly as written.
"""

from __future__ import annotations

from collections.abc import Callable

from . import evaluate
from ..accel import plain as no_folding
from ._core import Attribution, Target
from ._rules import Rectifiers
from .cam import default_layer, gradcam, guided_gradcam
from .gradients import deconvnet, guided_backprop, saliency
from .integrated import integrated_gradients
from .occlusion import occlusion
from .smoothgrad import smoothgrad

METHODS: dict[str, Callable[..., Attribution]] = {
    "saliency": saliency,
    "deconvnet": deconvnet,
    "guided": guided_backprop,
    "gradcam": gradcam,
    "guided-gradcam": guided_gradcam,
    "smoothgrad": smoothgrad,
    "ig": integrated_gradients,
    "occlusion": occlusion,
}

__all__ = [
    "Attribution",
    "METHODS",
    "Rectifiers",
    "Target",
    "deconvnet",
    "default_layer",
    "evaluate",
    "gradcam",
    "guided_backprop",
    "guided_gradcam",
    "integrated_gradients",
    "no_folding",
    "occlusion",
    "saliency",
    "smoothgrad",
]
