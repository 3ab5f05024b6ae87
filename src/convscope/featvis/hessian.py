"""The linear algebra and smoothing behind `invariances`: Lanczos, a smooth ReLU surrogate, a block basis.

- `lanczos(matvec, start, iterations)`: Ritz pairs of a symmetric operator given only as matrix-vector products,
  with full reorthogonalization (so k small eigenpairs come out orthonormal), restarts on breakdown, and an optional
  projection for operators living on a subspace.
- `SmoothReLU(beta)`: a `TorchFunctionMode` that swaps every ReLU-family call for softplus, so a piecewise-linear
  network gets a Hessian that is not zero almost everywhere.
- `BlockBasis`: an orthonormal basis of images constant on a grid of blocks ("superpixels").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .._rectifiers import RELU, argument
from ..errors import OptionError

__all__ = ["lanczos", "LanczosResult", "SmoothReLU", "BlockBasis"]


# -- the smooth surrogate --------------------------------------------------------------------------------------------

class SmoothReLU(TorchFunctionMode):
    """Replace ReLU-family calls by softplus of sharpness `beta` while active (a `TorchFunctionMode`).

    relu -> softplus(x, beta); hardtanh(lo, hi) and relu6 -> lo + softplus(x - lo) - softplus(x - hi);
    leaky_relu(s) -> s x + (1 - s) softplus(x). In-place variants return a new tensor (modules use the returned
    value, as every torchvision model does). As beta grows the surrogate approaches the real network.
    """

    def __init__(self, beta: float = 10.0):
        super().__init__()
        self.beta = float(beta)

    def _sp(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x, beta=self.beta)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RELU:
            return self._sp(argument(args, kwargs, 0, "input", None))
        if func is F.hardtanh or func is F.relu6:
            lo, hi = (0.0, 6.0) if func is F.relu6 else (
                float(argument(args, kwargs, 1, "min_val", -1.0)), float(argument(args, kwargs, 2, "max_val", 1.0)))
            x = argument(args, kwargs, 0, "input", None)
            return lo + self._sp(x - lo) - self._sp(x - hi)
        if func is F.leaky_relu:
            slope = float(argument(args, kwargs, 1, "negative_slope", 0.01))
            x = argument(args, kwargs, 0, "input", None)
            return slope * x + (1 - slope) * self._sp(x)
        return func(*args, **kwargs)


# -- Lanczos ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LanczosResult:
    """Ritz pairs of a symmetric operator. `eigenvalues` (m,) ascending, `eigenvectors` (m, n) orthonormal rows,
    `residuals` (m,) = ||A v - lambda v|| of each pair (small = converged)."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, iterations: int, *,
            generator: torch.Generator | None = None,
            project: Callable[[torch.Tensor], torch.Tensor] | None = None) -> LanczosResult:
    """Lanczos iteration with full reorthogonalization for a symmetric linear operator on vectors of size n.

    Args:
        matvec: v (n,) -> A v (n,), A symmetric.
        start: (n,) the first Krylov vector (normalized here); its dtype and device are used throughout.
        iterations: m, the Krylov dimension (at most n); m = n gives every eigenpair.
        generator: draws a fresh orthogonal vector when the Krylov space becomes invariant (breakdown).
        project: for an operator living on a subspace (A = P A P), maps fresh vectors into it, so every Ritz
            vector stays in the subspace; when the subspace is exhausted the iteration stops early.

    Returns the Ritz pairs (m of them, fewer if the space was exhausted), eigenvalues ascending.
    """
    n = start.numel()
    m = min(int(iterations), n)
    if m < 1:
        raise OptionError(f"iterations={iterations} must be >= 1")
    basis = torch.zeros(m, n, dtype=start.dtype, device=start.device)
    alphas = torch.zeros(m, dtype=torch.float64)
    betas = torch.zeros(m, dtype=torch.float64)
    q = start.flatten() / start.norm()
    for j in range(m):
        basis[j] = q
        w = matvec(q).flatten()
        alphas[j] = torch.dot(w, q).item()
        # Full reorthogonalization, twice ("twice is enough"), replaces the three-term recurrence's subtraction.
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = w.norm().item()
        betas[j] = beta
        if j + 1 == m:
            break
        scale = max(abs(alphas[: j + 1]).max().item(), 1e-30)
        if beta <= 1e-10 * scale:  # invariant subspace found: continue from a new orthogonal direction
            betas[j] = 0.0
            w = torch.randn(n, generator=generator, dtype=torch.float64).to(start.device, start.dtype)
            w = project(w) if project is not None else w
            size = w.norm()
            for _ in range(2):
                w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
            if w.norm() <= 1e-8 * size:  # the whole (sub)space is spanned: stop with j + 1 pairs
                m = j + 1
                break
            q = w / w.norm()
        else:
            q = w / beta
    basis, alphas, betas = basis[:m], alphas[:m], betas[:m]
    tri = torch.diag(alphas) + torch.diag(betas[: m - 1], 1) + torch.diag(betas[: m - 1], -1)
    theta, s = torch.linalg.eigh(tri)
    vectors = s.T.to(start.dtype).to(start.device) @ basis
    residuals = (betas[m - 1] * s[m - 1]).abs()
    return LanczosResult(theta.to(start.dtype), vectors, residuals.to(start.dtype))


class BlockBasis:
    """An orthonormal basis of images that are constant on a grid of `resolution` blocks per channel ("superpixels").

    `up(z)` (C * h * w,) -> (C * H * W,) spreads each coefficient over its block divided by sqrt(block area), so the
    columns are orthonormal; `down` is its transpose. `resolution=None` (or a grid as fine as the image) is the
    plain pixel basis.
    """

    def __init__(self, shape: torch.Size, resolution: int | None, device: torch.device, dtype: torch.dtype):
        channels, height, width = shape
        h, w = (height, width) if resolution is None else (min(resolution, height), min(resolution, width))
        self.identity = (h, w) == (height, width)
        self.channels, self.blocks = channels, h * w
        self.size = channels * h * w
        rows = torch.arange(height, device=device) * h // height
        cols = torch.arange(width, device=device) * w // width
        self.index = (rows[:, None] * w + cols[None, :]).flatten()  # (H * W,) block of each pixel
        area = torch.bincount(self.index, minlength=self.blocks).to(dtype)
        self.scale = area.rsqrt()[self.index]  # (H * W,)

    def up(self, z: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return z
        return (z.view(self.channels, self.blocks)[:, self.index] * self.scale).flatten()

    def down(self, v: torch.Tensor, *, scaled: bool = True) -> torch.Tensor:
        if self.identity:
            return v
        v = v.view(self.channels, -1) * (self.scale if scaled else 1)
        out = v.new_zeros(self.channels, self.blocks).index_add_(1, self.index, v)
        return out.flatten()
