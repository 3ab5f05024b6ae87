"""Fooling images: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018) adversarial examples.

The attack lives in pixel space: pixels in [0, 1] are normalized with the `ModelSpec` before every forward pass, and
the perturbation `delta` always satisfies ||delta||_inf <= eps and 0 <= x + delta <= 1 (eps in pixel units, e.g.
2/255). Untargeted attacks (`target=None`) raise the cross-entropy of the true label (by default the model's own
prediction on the clean image); targeted attacks lower the cross-entropy of `target`.

- FGSM: one step x + eps * sign(grad), clipped to [0, 1].
- PGD: a seeded uniform random start in the eps-ball (`random_start`), then `steps` signed-gradient steps of
  `step_size` (default 2.5 * eps / steps), each projected back onto the eps-ball and [0, 1]; the last iterate is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..accel import Precision, check_precision, choose_precision, network_precision
from ..errors import OptionError, TargetError
from ..hooks import frozen
from ..models import ModelSpec, load
from ..results import Recipe, ResultMixin
from .inversion import ImageLike, as_pixels, check_option

__all__ = ["Adversarial", "adversarial"]

Method = Literal["fgsm", "pgd"]
ClassLike = int | str


@dataclass(frozen=True)
class Adversarial(ResultMixin):
    """An adversarial batch and what the model made of it.

    Attributes:
        original: (B, C, H, W) clean pixels in [0, 1].
        adversarial: (B, C, H, W) attacked pixels in [0, 1].
        perturbation: (B, C, H, W) `adversarial - original`, |values| <= eps.
        probs_before, probs_after: (B, K) softmax of the model on the clean and attacked images.
        label: (B,) the class pushed away from (untargeted) or the clean prediction (targeted).
        target: (B,) the class pushed towards, or None for untargeted attacks.
        success: (B,) bool: the attacked prediction is `target` (targeted) or differs from `label` (untargeted).
        trace: (steps + 1,) mean attack loss (cross-entropy of label / target) before and after each step.
        class_names: K class names, or None.
        recipe: model, method, eps, steps, step size, seed, versions.
    """

    original: torch.Tensor
    adversarial: torch.Tensor
    perturbation: torch.Tensor
    probs_before: torch.Tensor
    probs_after: torch.Tensor
    label: torch.Tensor
    target: torch.Tensor | None
    success: torch.Tensor
    trace: torch.Tensor
    class_names: list[str] | None
    recipe: Recipe

    def predictions(self, *, after: bool = False, top: int = 3) -> list[list[tuple[int, str, float]]]:
        """Per image, the `top` classes as (index, name, probability), on the clean (or attacked) images."""
        probs = self.probs_after if after else self.probs_before
        values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
        return [[(int(i), self._name(int(i)), float(v)) for v, i in zip(vs, idx)] for vs, idx in zip(values, indices)]

    def _name(self, index: int) -> str:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    @property
    def magnification(self) -> float:
        """The factor the perturbation is multiplied by in `to_image` (+/-eps spans the whole grey range)."""
        eps = self.recipe.params["eps"]
        return 0.5 / eps if eps > 0 else 1.0

    def to_image(self, *, cell: int = 224, top: int = 2):
        """Per image a row: original | perturbation x magnified (grey = 0) | adversarial, with the top predictions."""
        from PIL import Image

        from ..render.core import grid, label, to_pil

        rows = []
        before, after = self.predictions(top=top), self.predictions(after=True, top=top)
        for b in range(self.original.shape[0]):
            shown = (self.perturbation[b] * self.magnification + 0.5).clamp(0, 1)
            tiles = [to_pil(self.original[b]), to_pil(shown), to_pil(self.adversarial[b])]
            tiles = [t.resize((cell, round(cell * t.height / t.width)), Image.NEAREST) for t in tiles]
            texts = [[_short(n, p) for _, n, p in before[b]],
                     [f"perturbation x{self.magnification:.0f}", f"|delta| <= {_eps_text(self.recipe.params['eps'])}"],
                     [_short(n, p) for _, n, p in after[b]]]
            for i, lines in enumerate(texts):
                for line in lines:
                    tiles[i] = label(tiles[i], line, size=12)
            rows.append(grid(tiles, columns=3, pad=4))
        method = self.recipe.params["method"].upper()
        classes = self.target if self.target is not None else self.label
        same = bool((classes == classes[0]).all())
        which = self._name(int(classes[0])) if same else "a class per image"
        goal = f"targeted -> {which}" if self.target is not None else f"untargeted, away from {which}"
        title = f"{method} eps={_eps_text(self.recipe.params['eps'])}, {goal}"
        return label(grid(rows, columns=1, pad=0), title, size=13, where="top")


def _short(name: str, prob: float) -> str:
    return f"{name.split(',')[0][:24]}: {prob:.1%}" if prob >= 0.001 else f"{name.split(',')[0][:24]}: <0.1%"


def _eps_text(eps: float) -> str:
    scaled = eps * 255
    return f"{round(scaled)}/255" if abs(scaled - round(scaled)) < 1e-6 else f"{eps:.4g}"


def _classes(spec: ModelSpec, value: ClassLike | Sequence[ClassLike] | torch.Tensor, batch: int, what: str,
             n_classes: int) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        indices = value.detach().long().flatten().tolist()
    elif isinstance(value, (int, str)):
        indices = [spec.class_index(value)] * batch
    else:
        indices = [spec.class_index(v) for v in value]
    if len(indices) == 1:
        indices = indices * batch
    if len(indices) != batch:
        raise TargetError(f"{len(indices)} {what}s for a batch of {batch} images")
    for index in indices:
        if not 0 <= index < n_classes:
            raise TargetError(f"{what} {index} is out of range; model {spec.name!r} has classes 0..{n_classes - 1}")
    return torch.tensor(indices, dtype=torch.long, device=spec.device)


def adversarial(
    model: ModelSpec | nn.Module | str,
    image: ImageLike,
    target: ClassLike | Sequence[ClassLike] | torch.Tensor | None = None,
    *,
    eps: float = 2 / 255,
    method: Method = "pgd",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    label: ClassLike | Sequence[ClassLike] | torch.Tensor | None = None,
    seed: int = 0,
    precision: Precision = "float32",
    progress: Callable[[int, int], None] | None = None,
) -> Adversarial:
    """Find a perturbation of L-inf size <= `eps` that changes the model's decision.

    Args:
        model: a `ModelSpec`, `nn.Module` or model string; it must output class logits (B, K).
        image: path, PIL image, array, or [0, 1] pixel tensor (C, H, W) / (B, C, H, W) (see `inversion.as_pixels`).
        target: class (index or name, one per image or one for all) to push towards; `None` for an untargeted
            attack away from `label`.
        eps: L-inf radius in [0, 1] pixel units (2/255 by default).
        method: "fgsm" (one step of size eps) or "pgd".
        steps, step_size: PGD iterations and step (default 2.5 * eps / steps); FGSM ignores both.
        random_start: PGD starts from a uniform random point of the eps-ball drawn with `seed`.
        label: the true class for untargeted attacks (default: the model's prediction on the clean image).
        seed: seeds PGD's random start (a local `torch.Generator`).
        precision: what the attack's gradient passes run in: "float32" (default: an attack is judged by the
            model as written), "bf16" or "auto" (see `convscope.accel`); the clean and final predictions are always
            float32.
        progress: called as `progress(done, total)` after every gradient step (FGSM: one).
    """
    spec = load(model)
    if method not in ("fgsm", "pgd"):
        raise OptionError(f"method {method!r} is unknown; choose 'fgsm' or 'pgd'")
    check_option("eps", eps, low=0, high=1)
    check_option("steps", steps, low=1)
    if step_size is None:
        step_size = 2.5 * eps / steps
    check_option("step_size", step_size, low=0)
    check_precision(precision)  # a bad choice fails before any work
    original = as_pixels(spec, image)
    batch = original.shape[0]
    with frozen(spec.module) as net:
        with torch.no_grad():
            logits = net(spec.normalize(original))
        if logits.ndim != 2:
            raise TargetError(f"model {spec.name!r} outputs {tuple(logits.shape)}, not class logits (B, K)")
        n_classes = logits.shape[1]
        predicted = logits.argmax(1)
        true = predicted if label is None else _classes(spec, label, batch, "label", n_classes)
        goal = None if target is None else _classes(spec, target, batch, "target", n_classes)
        classes, sign = (true, 1.0) if goal is None else (goal, -1.0)

        def loss_and_grad(pixels: torch.Tensor, choice: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            pixels = pixels.detach().requires_grad_(True)
            with network_precision(choice or ran, pixels.device):  # `ran` is chosen below, before any step
                out = net(spec.normalize(pixels))
            loss = F.cross_entropy(out.to(pixels.dtype), classes, reduction="sum")
            (grad,) = torch.autograd.grad(loss, pixels)
            return loss.detach() / batch, grad

        ran = choose_precision(precision, net, lambda choice: loss_and_grad(original, choice),
                               ("adversarial", tuple(original.shape)), spec.device, spec.dtype)

        def project(pixels: torch.Tensor) -> torch.Tensor:
            return torch.minimum(torch.maximum(pixels, original - eps), original + eps).clamp(0, 1)

        trace = []
        if method == "fgsm":
            loss, grad = loss_and_grad(original)
            attacked = project(original + sign * eps * grad.sign())
            trace.append(loss)
            if progress is not None:
                progress(1, 1)
        else:
            attacked = original
            if random_start and eps > 0:
                generator = torch.Generator().manual_seed(seed)
                noise = torch.rand(original.shape, generator=generator, dtype=torch.float64) * 2 - 1
                attacked = project(original + eps * noise.to(original.device, original.dtype))
            for step in range(steps):
                loss, grad = loss_and_grad(attacked)
                trace.append(loss)
                attacked = project(attacked + sign * step_size * grad.sign())
                if progress is not None:
                    progress(step + 1, steps)
        with torch.no_grad():
            after = net(spec.normalize(attacked))
            trace.append(F.cross_entropy(after, classes))
    new = after.argmax(1)
    success = new != true if goal is None else new == goal
    recipe = Recipe(
        kind="adversarial",
        model=spec.describe(),
        params={"method": method, "eps": eps, "steps": 1 if method == "fgsm" else steps,
                "step_size": eps if method == "fgsm" else step_size,
                "random_start": bool(random_start and method == "pgd"), "seed": seed,
                "target": None if goal is None else goal.tolist(), "label": true.tolist(),
                "success": success.tolist(), "space": "pixels [0, 1], L-inf", "precision": ran},
    )
    return Adversarial(
        original=original.detach().clone(),
        adversarial=attacked.detach().clone(),
        perturbation=(attacked - original).detach(),
        probs_before=logits.softmax(1).detach(),
        probs_after=after.softmax(1).detach(),
        label=true.detach(),
        target=None if goal is None else goal.detach(),
        success=success.detach(),
        trace=torch.stack([t.float() for t in trace]).cpu(),
        class_names=list(spec.class_names) if spec.class_names else None,
        recipe=recipe,
    )
