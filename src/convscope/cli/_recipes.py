"""`convscope invert | adversarial | invariances | evolution`: the classic experiments beyond plain rendering."""

from __future__ import annotations

import argparse
from fractions import Fraction

from ..errors import OptionError
from ._common import add_model_args, add_output, device, load_spec, print_json, progress, step_progress
from ._featvis import add_precision


def _fraction(text: str) -> float:
    """`"2/255"`, `"0.008"` -> float."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or fraction like 2/255") from None


def _unit(args: argparse.Namespace) -> str:
    unit = str(args.unit).strip()
    if not unit.split("@")[0].lstrip("-").isdigit():
        raise OptionError(f"--unit {unit!r}: give a channel index, e.g. 12, or CHANNEL@ROW,COL like 12@3,4")
    return f"{args.layer}:{unit}"


def register(sub: argparse._SubParsersAction) -> None:
    invert = sub.add_parser("invert", help="reconstruct an image from a layer's code (Mahendran & Vedaldi)",
                            description="Feature inversion: from seeded noise, find an image whose code at LAYER "
                                        "matches the photo's, under a total-variation prior. Reports the relative "
                                        "code error ||phi(x*) - phi(x0)|| / ||phi(x0)|| reached.")
    add_model_args(invert)
    invert.add_argument("image", help="image file")
    invert.add_argument("--layer", required=True, help="named_modules() path (see `convscope layers MODEL`)")
    invert.add_argument("--steps", type=int, default=200, help="optimization steps (default 200)")
    invert.add_argument("--tv", type=float, default=0.1, help="weight of the TV^beta prior (default 0.1; deeper "
                                                              "layers like 0.5-2)")
    invert.add_argument("--beta", type=float, default=2.0, help="TV exponent (default 2)")
    invert.add_argument("--jitter", type=int, default=0, help="random shift in pixels per step (default 0)")
    invert.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    add_precision(invert)
    add_output(invert, "inversion.png")
    invert.set_defaults(handler=run_invert)

    adv = sub.add_parser("adversarial", help="fooling images: FGSM / PGD adversarial examples",
                         description="Perturb an image within an L-inf ball of radius EPS (pixels in [0, 1]) to push "
                                     "the model away from its prediction, or towards --target. Shows original | "
                                     "perturbation (magnified) | adversarial with the predictions.")
    add_model_args(adv)
    adv.add_argument("image", help="image file")
    adv.add_argument("--target", default=None, help="class index or name to push towards (default: untargeted)")
    adv.add_argument("--eps", type=_fraction, default=2 / 255, help="L-inf radius in [0, 1] pixel units, e.g. 2/255 "
                                                                    "(default)")
    adv.add_argument("--method", choices=("fgsm", "pgd"), default="pgd", help="default pgd")
    adv.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    adv.add_argument("--step-size", type=_fraction, default=None, help="PGD step (default 2.5 * eps / steps)")
    adv.add_argument("--no-random-start", action="store_true", help="PGD starts at the image, not a random point")
    add_precision(adv, "float32")
    add_output(adv, "adversarial.png")
    adv.set_defaults(handler=run_adversarial)

    inv = sub.add_parser("invariances", help="Hessian eigen-directions of a unit at its optimum",
                         description="Render the unit, then find the steepest and flattest directions of its "
                                     "activation's Hessian (Lanczos on Hessian-vector products of a softplus "
                                     "surrogate of the ReLUs) and show images moved along them.")
    add_model_args(inv)
    inv.add_argument("--layer", required=True, help="named_modules() path")
    inv.add_argument("--unit", required=True, help="channel index, or CHANNEL@ROW,COL for one position")
    inv.add_argument("--k", type=int, default=4, help="directions of each kind (default 4; fewer, with a note, when "
                                                     "the optimum has fewer free directions)")
    inv.add_argument("--steps", type=int, default=256, help="render steps for the optimum (default 256)")
    inv.add_argument("--iterations", type=int, default=None, help="Lanczos iterations (default max(6k, 24))")
    inv.add_argument("--beta", type=float, default=10.0, help="softplus sharpness of the ReLU surrogate (default 10)")
    inv.add_argument("--radius", type=float, default=0.1, help="RMS pixel change at the strip ends (default 0.1)")
    inv.add_argument("--resolution", type=int, default=None, help="directions constant on this grid of blocks per "
                                                                  "channel (default: 12 from 64 px up, every pixel "
                                                                  "below; 0 = every pixel)")
    inv.add_argument("--points", type=int, default=5, help="images per strip (default 5)")
    add_precision(inv)
    add_output(inv, "invariances.png")
    inv.set_defaults(handler=run_invariances)

    evo = sub.add_parser("evolution", help="one unit rendered from several training checkpoints",
                         description="Render the same unit, with the same seed, from each checkpoint (e.g. the "
                                     "model.epochN.safetensors files of `convscope train --checkpoint-every N`).")
    evo.add_argument("checkpoints", nargs="+", metavar="CKPT", help="model strings or files, in training order")
    evo.add_argument("--arch", default=None, help="architecture model string for bare weight files")
    evo.add_argument("--layer", required=True, help="named_modules() path")
    evo.add_argument("--unit", required=True, help="channel index, or CHANNEL@ROW,COL")
    evo.add_argument("--steps", type=int, default=256, help="render steps per checkpoint (default 256)")
    evo.add_argument("--seed", type=int, default=0, help="render seed, the same for every checkpoint (default 0)")
    evo.add_argument("--param", choices=("fourier", "pixel"), default="fourier", help="default fourier")
    evo.add_argument("--no-transforms", action="store_true", help="no random jitter/scale/rotate (small inputs "
                                                                   "like 28x28 often render better without)")
    add_precision(evo)
    add_output(evo, "evolution.png")
    evo.set_defaults(handler=run_evolution)


def run_invert(args: argparse.Namespace) -> int:
    from ..featvis.inversion import invert

    spec = load_spec(args)
    with progress("inverting", total=args.steps) as bar:
        task = bar.add_task("inverting", total=args.steps)
        result = invert(spec, args.image, layer=args.layer, steps=args.steps, tv=args.tv, beta=args.beta,
                        jitter=args.jitter, lr=args.lr, seed=args.seed, precision=args.precision,
                        progress=lambda done, total: bar.update(task, completed=done))
    path = result.save(args.output)
    if args.json:
        print_json({"output": str(path), "code_error": result.code_error,
                    "initial_code_error": result.initial_code_error, "recipe": result.recipe.to_dict()})
    else:
        print(f"{args.layer}: relative code error {result.initial_code_error:.3f} (noise) -> "
              f"{result.code_error:.3f} after {args.steps} steps; wrote {path}")
    return 0


def run_adversarial(args: argparse.Namespace) -> int:
    from ..featvis.adversarial import _eps_text, adversarial

    spec = load_spec(args)
    with progress(args.method) as bar:
        result = adversarial(spec, args.image, args.target, eps=args.eps, method=args.method, steps=args.steps,
                             step_size=args.step_size, random_start=not args.no_random_start, seed=args.seed,
                             precision=args.precision, progress=step_progress(bar, args.method))
    path = result.save(args.output)
    before, after = result.predictions(top=3)[0], result.predictions(after=True, top=3)[0]
    if args.json:
        def rows(preds):
            return [{"index": i, "name": n, "prob": p} for i, n, p in preds]

        print_json({"output": str(path), "success": bool(result.success[0]), "before": rows(before),
                    "after": rows(after), "linf": float(result.perturbation.abs().max()),
                    "recipe": result.recipe.to_dict()})
    else:
        print(f"{args.method.upper()} eps={_eps_text(args.eps)}: "
              f"{before[0][1]} ({before[0][2]:.1%}) -> {after[0][1]} ({after[0][2]:.1%}); "
              f"{'success' if bool(result.success[0]) else 'no success'}; wrote {path}")
    return 0


def run_invariances(args: argparse.Namespace) -> int:
    from ..featvis.invariances import invariances

    spec = load_spec(args)
    with progress("invariances") as bar:
        result = invariances(spec, _unit(args), k=args.k, steps=args.steps, iterations=args.iterations,
                             beta=args.beta, radius=args.radius, points=args.points, seed=args.seed,
                             resolution="auto" if args.resolution is None else args.resolution or None,
                             precision=args.precision, progress=step_progress(bar, "render, then Hessian"))
    path = result.save(args.output)
    change = result.change()
    if args.json:
        print_json({"output": str(path), "activation": result.activation, "roles": result.roles,
                    "eigenvalues": result.eigenvalues.tolist(), "residuals": result.residuals.tolist(),
                    "max_activation_change": change.tolist(), "recipe": result.recipe.to_dict()})
    else:
        k = result.roles.count("steepest")
        if "note" in result.recipe.params:
            print(f"note: {result.recipe.params['note']}")
        print(f"{_unit(args)}: activation {result.activation:.4g} at the optimum; largest change along the "
              f"steepest directions {change[:k].mean():.4g}, flattest {change[k:].mean():.4g} (mean); wrote {path}")
    return 0


def run_evolution(args: argparse.Namespace) -> int:
    from ..featvis.evolution import evolution

    n = len(args.checkpoints)
    with progress("checkpoints", total=n) as bar:
        task = bar.add_task("checkpoints", total=n)
        result = evolution(args.checkpoints, _unit(args), seed=args.seed, steps=args.steps, arch=args.arch,
                           device=device(args), progress=lambda done, total: bar.update(task, completed=done),
                           param=args.param, precision=args.precision,
                           **({"transforms": None} if args.no_transforms else {}))
    path = result.save(args.output)
    if args.json:
        print_json({"output": str(path), "labels": result.labels, "values": result.values.tolist(),
                    "recipe": result.recipe.to_dict()})
    else:
        values = ", ".join(f"{name} {float(v):.3g}" for name, v in zip(result.labels, result.values))
        print(f"{_unit(args)}: {values}; wrote {path}")
    return 0
