"""`convscope attribute` (maps for images, one method, a list, or all side by side) and `convscope
evaluate-attribution` (deletion/insertion AUC, randomization check and speed per method over a dataset; in
`_attribute_eval`).

Method options left unset on the command line take the library's defaults (one default per option: the CLI and
the API make the same map)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConvscopeError, OptionError
from ._common import add_model_args, load_spec, npz_output, picture_output, print_json, progress

NAMES = ("saliency", "deconvnet", "guided", "gradcam", "guided-gradcam", "smoothgrad", "ig", "occlusion")
BF16_METHODS = ("occlusion",)  # the perturbation methods: gradient maps stay float32 and equal Captum's
RGB_METHODS = ("saliency", "deconvnet", "guided", "guided-gradcam", "smoothgrad", "ig")  # signed input-space maps


def register(sub: argparse._SubParsersAction) -> None:
    from ._attribute_eval import register as register_evaluate

    attribute = sub.add_parser(
        "attribute", help="attribution maps: which pixels made the model say X",
        description="Attribution maps for images. `--method all` (or a list such as saliency,gradcam) draws the "
                    "methods side by side with the predicted class and deletion/insertion AUC under each map. A file "
                    "that cannot be read is reported by name and skipped; the exit code is 2 if any failed.")
    add_model_args(attribute)
    attribute.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    attribute.add_argument("--method", default="saliency", metavar="METHODS",
                           help=f"one method, a comma-separated list, or all; from {', '.join(NAMES)} "
                                "(default saliency)")
    add_method_args(attribute)
    attribute.add_argument("-o", "--output", default=None, type=picture_output,
                           help="PNG picture to write (default: none)")
    attribute.add_argument("--save", default=None, metavar="MAPS.npz", type=npz_output,
                           help="write maps, inputs and recipe (.npz)")
    attribute.add_argument("--normalization", default="each", choices=("each", "method", "all"),
                           help="colour scale: each map on its own (default), one per method across the images, "
                                "or one shared by all maps")
    attribute.add_argument("--view", default=None, choices=("heatmap", "rgb"),
                           help="heatmap over the image, or rgb: the signed gradient as a colour image around grey "
                                "(the gradient methods; default: rgb for guided backprop, heatmap for the rest)")
    attribute.add_argument("--columns", type=int, default=None, help="wrap panel rows after N tiles (default: 5 when "
                                                                        "more than 5 methods)")
    attribute.add_argument("--cell", type=int, default=None, help="panel tile size in pixels")
    attribute.add_argument("--no-eval", action="store_true", help="skip the deletion/insertion scores")
    attribute.add_argument("--json", action="store_true", help="print results as JSON")
    attribute.set_defaults(handler=run_attribute)
    register_evaluate(sub)


def add_method_args(parser: argparse.ArgumentParser) -> None:
    """The options of the methods; unset ones (None) take the library's defaults."""
    parser.add_argument("--target", default=None, help="class index, class name ('tabby') or unit LAYER:CH "
                                                       "(default: the predicted class)")
    parser.add_argument("--layer", default=None, help="Grad-CAM layer (default: the last spatial layer)")
    parser.add_argument("--steps", type=int, default=None, help="Integrated Gradients steps (default 50, as Captum)")
    parser.add_argument("--samples", type=int, default=None, help="SmoothGrad samples (default 25)")
    parser.add_argument("--noise", type=float, default=None, help="SmoothGrad noise level (default 0.15)")
    parser.add_argument("--window", type=int, default=None, help="occlusion window in pixels (default 16)")
    parser.add_argument("--stride", type=int, default=None, help="occlusion stride in pixels (default 8)")
    parser.add_argument("--score", default=None, choices=("logit", "probability"),
                        help="what occlusion measures the drop of: the logit (default, as every other method) "
                             "or the softmax probability")
    parser.add_argument("--precision", default="float32", choices=("float32", "bf16", "auto"),
                        help="occlusion's arithmetic: float32 (default), bf16 (faster on bf16 hardware; the map "
                             "deviates by up to ~10%% of its maximum) or auto; the gradient methods always run "
                             "float32")
    parser.add_argument("--curve-steps", type=int, default=20, help="deletion/insertion steps (default 20)")


def method_names(text: str) -> list[str]:
    """`--method` / `--methods`: "all", one name or a comma-separated list -> validated names, in order given."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(NAMES)
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise OptionError(f"unknown method {', '.join(map(repr, unknown)) or repr(text)}; choose from "
                          f"{', '.join(NAMES)}, a comma-separated list of them, or all")
    return list(dict.fromkeys(names))


def check_precision(names: list[str], precision: str) -> None:
    """Refuse a low precision no chosen method supports; say which methods ignore it."""
    if precision == "float32":
        return
    if not any(n in BF16_METHODS for n in names):
        raise OptionError(f"--precision {precision} applies to {', '.join(BF16_METHODS)} only; "
                          f"{', '.join(names)} {'runs' if len(names) == 1 else 'run'} in float32 (the gradient "
                          "maps equal Captum's)")
    others = [n for n in names if n not in BF16_METHODS]
    if others:
        print(f"convscope: note: --precision {precision} applies to {', '.join(BF16_METHODS)}; "
              f"{', '.join(others)} {'runs' if len(others) == 1 else 'run'} in float32", file=sys.stderr)


def target_arg(text: str | None) -> Any:
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def method(name: str):
    from .. import attribution

    if name not in attribution.METHODS:
        raise OptionError(f"unknown method {name!r}; choose from {', '.join(NAMES)}")
    return attribution.METHODS[name]


def options(name: str, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """The keyword options of method `name` that the command line sets (unset ones keep the library default)."""
    given: dict[str, Any]
    if name in ("gradcam", "guided-gradcam"):
        given = {"layer": args.layer}
    elif name == "smoothgrad":
        given = {"samples": args.samples, "noise_level": args.noise, "seed": args.seed, "batch_size": max(batch, 32)}
    elif name == "ig":
        given = {"steps": args.steps, "internal_batch_size": max(batch, 32)}
    elif name == "occlusion":
        given = {"window": args.window, "stride": args.stride, "score": args.score, "precision": args.precision}
    else:
        given = {}
    return {k: v for k, v in given.items() if v is not None or k == "layer"}


def run_method(name: str, spec, x, args: argparse.Namespace, target: Any = "from-args"):
    target = target_arg(args.target) if target == "from-args" else target
    return method(name)(spec, x, target, **options(name, args, x.shape[0]))


def _class_label(spec, result, b: int, probabilities) -> str:
    if result.classes is None:
        return f"target {result.recipe.params['target']}"
    index = int(result.classes[b])
    text = f"{spec.class_name(index).split(',')[0]} ({index})"
    return text if probabilities is None else text + f" p={float(probabilities[b, index]):.2f}"


def _probabilities(spec, x):
    """Softmax of the model's output (B, K), or None when the output is not (B, K)."""
    import torch

    from ..hooks import frozen

    with frozen(spec.module) as net, torch.inference_mode():
        output = net(x)
    return output.softmax(1) if output.ndim == 2 else None


def _read(spec, paths: list[str], debug: bool) -> tuple[list[str], list, list[dict[str, str]]]:
    """Preprocess every image: (readable paths, their inputs (1, C, H, W) each, [{image, error}] for the rest).
    Each unreadable file is reported on stderr as it is met."""
    good, inputs, failed = [], [], []
    for path in paths:
        try:
            inputs.append(spec.preprocess(path))
            good.append(path)
        except ConvscopeError as error:
            if debug:
                raise
            print(f"convscope: error: {error}", file=sys.stderr)
            failed.append({"image": path, "error": str(error)})
    return good, inputs, failed


def run_attribute(args: argparse.Namespace) -> int:
    import torch

    from ..attribution import evaluate

    names = method_names(args.method)
    check_precision(names, args.precision)
    spec = load_spec(args)
    paths, inputs, failed = _read(spec, list(args.images), getattr(args, "debug", False))
    if not paths:
        raise ConvscopeError(f"none of the {len(args.images)} image(s) could be read")
    x = torch.cat(inputs)
    results: dict[str, Any] = {}
    scores: dict[str, dict[str, list[float]]] = {}
    with progress("attribute") as bar:
        task = bar.add_task("attribute", total=len(names) * (1 if args.no_eval else 2))
        for name in names:
            bar.update(task, description=f"{name} ({len(paths)} image{'s' if len(paths) > 1 else ''})")
            results[name] = run_method(name, spec, x, args)
            bar.advance(task)
            if not args.no_eval:
                bar.update(task, description=f"{name}: deletion/insertion")
                scores[name] = {kind: getattr(evaluate, kind)(spec, results[name], steps=args.curve_steps)
                                .auc.tolist() for kind in ("deletion", "insertion")}
                bar.advance(task)
    if args.output:
        _picture(args, spec, x, paths, results, scores)
    if args.save:
        _save_npz(args.save, results)
    rows = [{"image": path, "methods": {
        name: {"class": None if r.classes is None else int(r.classes[b]),
               "class_name": None if r.classes is None else spec.class_name(int(r.classes[b])),
               "score": float(r.scores[b]),
               **({f"{k}_auc": v[b] for k, v in scores[name].items()} if name in scores else {})}
        for name, r in results.items()}} for b, path in enumerate(paths)]
    code = 2 if failed else 0
    if args.json:
        print_json({"model": spec.name, "images": rows, "failed": failed, "output": args.output, "save": args.save})
        return code
    for row in rows:
        print(row["image"])
        for name, info in row["methods"].items():
            extra = "" if "deletion_auc" not in info else \
                f"  deletion AUC {info['deletion_auc']:.3f}  insertion AUC {info['insertion_auc']:.3f}"
            label = info["class_name"] or args.target
            print(f"  {name:<15} {label!s:<24} score {info['score']:.4g}{extra}")
    if args.output:
        print(f"wrote {args.output}")
    if failed:
        print(f"convscope: {len(failed)} of {len(args.images)} image(s) could not be read: "
              f"{', '.join(f['image'] for f in failed)}", file=sys.stderr)
    return code


def _picture(args: argparse.Namespace, spec, x, paths: list[str], results: dict, scores: dict) -> None:
    from ..render.overlay import DEFAULT_VIEWS, attribution_panel

    first = next(iter(results.values()))
    if args.view is None:
        views = DEFAULT_VIEWS
    else:
        views = {name: args.view if name in RGB_METHODS else "heatmap" for name in results}
    if len(results) == 1 and len(paths) == 1:
        first.save(args.output, view=views.get(first.method, "heatmap"))
        return
    probabilities = _probabilities(spec, x)
    captions = [[f"del {scores[n]['deletion'][b]:.3f}  ins {scores[n]['insertion'][b]:.3f}"
                 if n in scores else "" for b in range(len(paths))] for n in results]
    labels = [f"{Path(p).name}\n{_class_label(spec, first, b, probabilities)}" for b, p in enumerate(paths)]
    panel = attribution_panel(list(results.values()), captions=captions, image_labels=labels,
                              normalization=args.normalization, title=spec.name,
                              columns=args.columns or (5 if len(results) > 5 else None), cell=args.cell,
                              views=views)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    panel.save(args.output)


def _save_npz(path: str, results: dict) -> None:
    import json

    import numpy as np

    arrays: dict[str, Any] = {}
    recipes = {}
    for name, result in results.items():
        prefix = "" if len(results) == 1 else f"{name}/"
        arrays.update(result.arrays(prefix))
        recipes[name] = result.recipe.to_dict()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays, recipe=np.array(json.dumps(recipes if len(results) > 1 else
                                                                   next(iter(recipes.values())), default=str)))
