"""Invariances: at a unit's optimum, which image changes leave its activation alone, and which ruin it?

The second-order picture: near the optimum x*, a(x* + v) ~ a(x*) + g.v + v'Hv / 2. The leading eigenvectors of the
Hessian H of the activation w.r.t. the input pixels are the directions of steepest curvature; eigenvectors with
eigenvalues near zero are the flattest directions, the unit's (local) invariances. H is never formed: Lanczos with
full reorthogonalization runs on Hessian-vector products (double backprop), one backward pass each.

Two honest caveats, both recorded in the result's recipe:

- A ReLU network is piecewise linear in its input, so its Hessian is zero almost everywhere. The curvature is that
  of a smooth surrogate: every ReLU (module or functional, incl. ReLU6/hardtanh and leaky ReLU) is replaced by
  softplus with sharpness `beta` (`SmoothReLU`, run through `hooks.function_mode`); max-pooling stays (locally
  linear). The activations shown under the pictures are those of the real network.
- The optimum of a rendered image is not a stationary point: pixels pushed against 0 or 1 are held there by the
  box constraint with the gradient pointing outwards, and elsewhere the gradient need not vanish either. As at any
  box-constrained optimum, the analysis keeps the saturated pixels (within `margin` of 0 or 1) fixed and, with
  `tangent=True` (default), also removes the remaining gradient directions, the surrogate's and the real
  network's: the Hessian is P H P with P = M - sum_i n_i n_i' (M masks the free pixels, n_i an orthonormal basis
  of the two gradients on them), the tangent space of the unit's level sets, so "flat" means unchanged to second
  order (and, for the real network, to first order) and the strips move free pixels only.

Steepest = the `k` Ritz pairs of largest |eigenvalue|, flattest = the `k` of smallest |eigenvalue| in the Krylov
space; `residuals` says how well each pair is converged (the extreme ones converge first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..accel import Precision
from ..errors import InputShapeError, OptionError, UnitSyntaxError
from ..hooks import capture, frozen, function_mode
from ..layers import Unit, parse_unit
from ..models import ModelSpec, load
from ..results import Recipe, ResultMixin
from .hessian import BlockBasis, LanczosResult, SmoothReLU, lanczos
from .inversion import check_option
from .objectives import as_objective

__all__ = ["Invariances", "invariances", "lanczos", "LanczosResult", "SmoothReLU"]


Role = str  # "steepest" | "flattest"


@dataclass(frozen=True)
class Invariances(ResultMixin):
    """Hessian eigen-directions of a unit at its optimum, and images moved along them.

    Attributes:
        optimum: (1, C, H, W) pixels in [0, 1] where the Hessian is taken (the rendered unit, or the given start).
        activation: the real network's activation of the unit at the optimum.
        roles: per direction, "steepest" or "flattest" (k of each, steepest first).
        eigenvalues: (2k,) the surrogate Hessian's eigenvalue per direction (curvature per unit pixel-norm^2).
        eigenvectors: (2k, C, H, W) unit-norm directions in pixel space.
        residuals: (2k,) ||H v - lambda v|| per pair (Lanczos convergence).
        offsets: (P,) the signed RMS pixel change of each image in a strip (0 = the optimum).
        strips: (2k, P, C, H, W) optimum + offset * sqrt(C H W) * eigenvector, clipped to [0, 1].
        activations: (2k, P) the real network's activation of the unit for each strip image.
        surrogate_activations: (2k, P) the same under the smooth surrogate (what the Hessian describes).
        trace: (steps,) the objective along the render that found the optimum (None when `optimum` was given).
        recipe: model, unit, k, iterations, beta, tangent, radius, seed, the render recipe, versions.
    """

    optimum: torch.Tensor
    activation: float
    roles: list[Role]
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    offsets: torch.Tensor
    strips: torch.Tensor
    activations: torch.Tensor
    surrogate_activations: torch.Tensor
    trace: torch.Tensor | None
    recipe: Recipe

    def change(self) -> torch.Tensor:
        """(2k,) the largest |activation - activation at the optimum| along each direction's strip."""
        return (self.activations - self.activation).abs().amax(1)

    def to_image(self, *, cell: int | None = None):
        """One labelled row per direction: the direction itself (signed, grey/white = 0 for RGB, blue-red for one
        channel), then the moved images with the real activation under each (* marks the optimum)."""
        from ..render.core import grid, label, to_pil

        size = max(self.strips.shape[-2:])
        cell = cell or max(96, min(160, size))
        rows = []
        for d in range(self.strips.shape[0]):
            vector = self.eigenvectors[d]
            arrow = to_pil(vector[0], norm="absmax", cmap="coolwarm") if vector.shape[0] == 1 else \
                to_pil(vector, norm="absmax")
            texts = ["direction"] + [f"{'*' if float(t) == 0 else ''}{float(a):.3g}"
                                     for t, a in zip(self.offsets, self.activations[d])]
            tiles = [arrow] + [to_pil(img) for img in self.strips[d]]
            row = grid(tiles, columns=len(tiles), labels=texts, cell=cell)
            rank = self.roles[: d + 1].count(self.roles[d])
            rows.append(label(row, f"{self.roles[d]} {rank}: eigenvalue {float(self.eigenvalues[d]):.3g}, "
                                   f"activation change {float(self.change()[d]):.3g}", size=12, where="top"))
        radius = float(self.offsets.abs().max())
        title = (f"{self.recipe.params['unit']}: activation {self.activation:.3g} at the optimum (*); "
                 f"moves of RMS +/-{radius:.2g} per pixel")
        return label(grid(rows, columns=1, pad=4), title, size=13, where="top")


def _unit(unit: str | Unit) -> Unit:
    parsed = parse_unit(unit)
    if parsed.channel is None:
        raise UnitSyntaxError(f"unit {str(parsed)!r} names a whole layer; give LAYER:CHANNEL or LAYER:CHANNEL@ROW,COL")
    return parsed


def _scores(spec: ModelSpec, objective, layer: str, pixels: torch.Tensor, *, chunk: int = 16) -> torch.Tensor:
    """(N, C, H, W) pixels -> (N,) objective values (no gradient), in chunks, stopping at the layer."""
    values = []
    with torch.no_grad(), capture(spec.module, layer, stop=True) as cap:
        for part in pixels.split(chunk):
            cap.run(spec.normalize(part))
            values.append(objective({layer: cap[layer]}))
    return torch.cat(values)


def _gradient(spec: ModelSpec, objective, layer: str, pixels: torch.Tensor) -> torch.Tensor:
    """d objective / d pixels of the real network at `pixels` (1, C, H, W) -> (C * H * W,)."""
    x = pixels.detach().clone().requires_grad_(True)
    with capture(spec.module, layer, detach=False, stop=True) as cap:
        cap.run(spec.normalize(x))
        (grad,) = torch.autograd.grad(objective({layer: cap[layer]}).sum(), x, allow_unused=True)
    return torch.zeros(x.numel(), dtype=x.dtype, device=x.device) if grad is None else grad.flatten()


def _orthonormal(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gram-Schmidt, dropping vectors (numerically) in the span of the previous ones."""
    basis: list[torch.Tensor] = []
    for v in vectors:
        size = v.norm()
        for b in basis:
            v = v - b * torch.dot(b, v)
        if size > 0 and v.norm() > 1e-6 * size:
            basis.append(v / v.norm())
    return basis


def _render_optimum(spec: ModelSpec, unit: Unit, steps: int, seed: int, precision: Precision,
                    options: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
    from .render import render

    # No random transforms by default: the Hessian is taken at an optimum of the plain objective, not of its
    # average over jitter/scale/rotation (which, on small inputs, can sit far from any optimum of the plain one).
    vis = render(spec, str(unit), steps=steps, seed=seed, precision=precision, **{"transforms": None, **options})
    return vis.images[:1].detach(), vis.recipe.params, vis.trace[:, 0].detach().cpu()


def invariances(
    model: ModelSpec | nn.Module | str,
    unit: str | Unit,
    *,
    k: int = 4,
    iterations: int | None = None,
    optimum: torch.Tensor | None = None,
    steps: int = 256,
    beta: float = 10.0,
    tangent: bool = True,
    radius: float = 0.1,
    points: int = 5,
    margin: float = 0.02,
    resolution: int | None | str = "auto",
    seed: int = 0,
    precision: Precision = "auto",
    render_options: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Invariances:
    """The `k` steepest and `k` flattest Hessian directions of `unit` at its optimum, and strips of images along them.

    Args:
        model: a `ModelSpec`, `nn.Module` or model string.
        unit: `"LAYER:CH"` (the channel's spatial mean) or `"LAYER:CH@ROW,COL"` (one position), or a `Unit`.
        k: directions of each kind; fewer when the optimum has fewer than 2k free directions (the recipe keeps
            `k_requested` and a `note`).
        iterations: Lanczos steps (Hessian-vector products); default max(6 k, 24).
        optimum: (1, C, H, W) or (C, H, W) pixels in [0, 1] to take the Hessian at; `None` renders the unit first
            (`featvis.render` with `steps` and `seed`).
        beta: softplus sharpness of the smooth ReLU surrogate (`SmoothReLU`); larger = closer to the real network.
        tangent: restrict the Hessian to directions orthogonal to the gradient (see the module docstring).
        radius: RMS pixel change of the strips' end images; `points` images per strip (odd: the optimum is in it).
            Default 0.1: on `convscope:fashion-cnn` conv2:5 at 0.03 the strips look identical (about 12 of 784
            pixels move by more than 0.1 and the unit changes by 2-6%); at 0.1, 35-130 pixels move that much and
            the unit loses about 20% along the steepest directions against about 9% along the flattest.
        margin: pixels within `margin` of 0 or 1 are held fixed (see the module docstring); 0 frees every pixel.
        resolution: analyse directions that are constant on a grid of (up to) `resolution` x `resolution` blocks
            per channel, an orthonormal "superpixel" basis (inputs of at most that many pixels keep every pixel;
            `None`: every pixel). `"auto"` (default): 12 for inputs of `render.SMALL` (64) pixels and more, every
            pixel below, where one pixel is a large part of the picture and the blocks of a rendered optimum
            (half its pixels pushed to 0 or 1) nearly all hold a saturated pixel, leaving a handful of free
            directions (4 on the Fashion-MNIST CNN at 12). In the plain pixel basis of a large input, single
            pixels sitting on a ReLU kink dominate the steepest directions and the flattest are pixel noise, which
            the real network does not ignore at visible step sizes; blocks give fewer, readable directions
            (MobileNetV2 features.10:7 at radius 0.03: activation changes 0.27-0.50 along the steepest, 0.09-0.17
            along the flattest).
        seed: seeds the render and the Lanczos start vector (local generators).
        precision: what the render of the optimum runs in ("auto", "float32", "bf16"; see `featvis.render`). The
            Hessian, its Lanczos iterations and the activations shown are always float32: second derivatives in
            bfloat16 would be mostly rounding noise.
        render_options: more `featvis.render` options for the optimum (default: Fourier parameterization and no
            random transforms, `transforms=None`, so the optimum is one of the plain objective).
        progress: called as `progress(done, total)` after every render step and Hessian-vector product.
    """
    spec = load(model)
    unit = _unit(unit)
    check_option("k", k, low=1)
    check_option("beta", beta, low=0, strict=True)
    check_option("radius", radius, low=0)
    check_option("points", points, low=1)
    check_option("margin", margin, low=0, high=0.5)
    if resolution not in (None, "auto"):
        check_option("resolution", resolution, low=1)
    iterations = max(6 * k, 24) if iterations is None else iterations
    check_option("iterations", iterations, low=2 * k)
    objective = as_objective(str(unit))
    render_params, trace = None, None
    user = spec
    with frozen(user) as spec:  # the working copy; the user's model is not touched
        with torch.no_grad(), capture(spec.module, unit.layer, stop=True) as cap:  # checks layer and unit first
            cap.run(spec.example_input())
            objective.check({unit.layer: cap[unit.layer].shape})
        total = (steps if optimum is None else 0) + iterations
        if optimum is None:
            tick = {} if progress is None else {"progress": lambda done, _total: progress(done, total)}
            optimum, render_params, trace = _render_optimum(user, unit, steps, seed, precision,
                                                            {**tick, **(render_options or {})})
        optimum = optimum.detach().to(spec.device, spec.dtype)
        optimum = optimum.unsqueeze(0) if optimum.ndim == 3 else optimum
        if optimum.ndim != 4 or optimum.shape[0] != 1 or optimum.shape[1] != spec.channels:
            raise InputShapeError(f"optimum must be (1, {spec.channels}, H, W) pixels, got {tuple(optimum.shape)}")
        if resolution == "auto":
            from .render import SMALL

            resolution = 12 if max(optimum.shape[-2:]) >= SMALL else None
        n = optimum.numel()
        x = optimum.clone().requires_grad_(True)
        with function_mode(SmoothReLU(beta)), capture(spec.module, unit.layer, detach=False, stop=True) as cap:
            cap.run(spec.normalize(x))
            value = objective({unit.layer: cap[unit.layer]}).sum()
            (grad,) = torch.autograd.grad(value, x, create_graph=True)
        real_grad = _gradient(spec, objective, unit.layer, optimum)
        basis = BlockBasis(optimum.shape[1:], resolution, optimum.device, optimum.dtype)
        saturated = ((optimum <= margin) | (optimum >= 1 - margin)).flatten().to(spec.dtype)
        free = (basis.down(saturated, scaled=False) == 0).to(spec.dtype)  # blocks without a saturated pixel
        if not free.any():
            raise InputShapeError(f"every pixel (block) of the optimum is within margin={margin} of 0 or 1: nothing "
                                  "is free to move; lower the margin or render with a sigmoid parameterization")
        g = grad.detach().flatten()
        # Orthonormal basis of the gradients to remove (surrogate's and real network's, on the free coordinates).
        normals = _orthonormal([basis.down(g) * free, basis.down(real_grad) * free]) if tangent else []

        def project(z: torch.Tensor) -> torch.Tensor:
            z = z * free
            for normal in normals:
                z = z - normal * torch.dot(normal, z)
            return z

        # A unit linear in its input (no nonlinearity before it) has a gradient that does not depend on x: H = 0.
        linear = [not grad.requires_grad]

        products = [total - iterations]

        def hvp(z: torch.Tensor) -> torch.Tensor:
            z = project(z)
            products[0] += 1
            if progress is not None:
                progress(min(products[0], total), total)
            if not linear[0]:
                v = basis.up(z).view_as(x)
                (hv,) = torch.autograd.grad(grad, x, grad_outputs=v, retain_graph=True, allow_unused=True)
                linear[0] = hv is None
            return torch.zeros_like(z) if linear[0] else project(basis.down(hv.flatten()))

        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(basis.size, generator=generator, dtype=torch.float64).to(spec.device, spec.dtype)
        ritz = lanczos(hvp, project(start), iterations, generator=generator, project=project)
        del grad, x
        k_requested, found = k, ritz.eigenvalues.numel()
        if found < 2:
            raise OptionError(f"only {found} free direction(s) exist at this optimum, too few to compare a steepest "
                              "and a flattest; lower the margin or the resolution")
        k = min(k, found // 2)
        ranked = ritz.eigenvalues.abs().argsort(descending=True, stable=True)
        order = torch.cat([ranked[:k], ranked.flip(0)[:k]])  # k steepest, then k flattest (disjoint even with ties)
        vectors = torch.stack([basis.up(z) for z in ritz.eigenvectors[order]]).view(2 * k, *optimum.shape[1:])
        offsets = torch.linspace(-radius, radius, points, dtype=spec.dtype)
        if points % 2:
            offsets[points // 2] = 0.0
        moves = offsets.to(spec.device).view(1, -1, 1, 1, 1) * (n**0.5) * vectors.unsqueeze(1)
        strips = (optimum.unsqueeze(0) + moves).clamp(0, 1)  # (2k, P, C, H, W)
        flat_strips = strips.flatten(0, 1)
        real = _scores(spec, objective, unit.layer, flat_strips).view(2 * k, points)
        with function_mode(SmoothReLU(beta)):
            smooth = _scores(spec, objective, unit.layer, flat_strips).view(2 * k, points)
        activation = float(_scores(spec, objective, unit.layer, optimum)[0])
    recipe = Recipe(
        kind="invariances",
        model=user.describe(),
        params={"unit": str(unit), "k": k, "iterations": iterations, "beta": beta, "tangent": tangent,
                "radius": radius, "points": points, "margin": margin, "resolution": resolution,
                "free_coordinates": int(free.sum()), "k_requested": k_requested,
                **({"note": f"only {found} free directions at this optimum: showing k={k} of each kind, not "
                            f"{k_requested}"} if k < k_requested else {}),
                "seed": seed, "steps": steps,
                "surrogate": f"softplus(beta={beta:g}) for every ReLU/ReLU6/hardtanh/leaky ReLU (SmoothReLU)",
                "hessian": "w.r.t. the free [0, 1] pixels; Lanczos, full reorthogonalization, double-backprop HVPs"
                           + (", restricted to the orthogonal complement of the surrogate's and the real network's "
                              "gradients" if tangent else ""),
                "gradient_norm": float(g.norm()), "real_gradient_norm": float(real_grad.norm()), "linear": linear[0], "render": render_params},
    )
    return Invariances(
        optimum=optimum.detach().clone(),
        activation=activation,
        roles=["steepest"] * k + ["flattest"] * k,
        eigenvalues=ritz.eigenvalues[order].detach().cpu(),
        eigenvectors=vectors.detach(),
        residuals=ritz.residuals[order].detach().cpu(),
        offsets=offsets.cpu(),
        strips=strips.detach(),
        activations=real.detach().cpu(),
        surrogate_activations=smooth.detach().cpu(),
        trace=trace,
        recipe=recipe,
    )
