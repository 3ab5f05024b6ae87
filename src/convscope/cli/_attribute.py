"""`convscope attribute` (maps for images, one method or all side by side) and `convscope evaluate-attribution`
(deletion/insertion AUC, randomization check and speed per method over a dataset)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import ConvscopeError, OptionError
from ._common import add_model_args, load_spec, npz_output, picture_output, print_json

NAMES = ("saliency", "deconvnet", "guided", "gradcam", "guided-gradcam", "smoothgrad", "ig", "occlusion")


def register(sub: argparse._SubParsersAction) -> None:
    attribute = sub.add_parser(
        "attribute", help="attribution maps: which pixels made the model say X",
        description="Attribution maps for images. `--method all` draws every method side by side with the "
                    "predicted class and deletion/insertion AUC under each map.")
    add_model_args(attribute)
    attribute.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    attribute.add_argument("--method", default="saliency", choices=(*NAMES, "all"), help="default saliency")
    _add_method_args(attribute)
    attribute.add_argument("-o", "--output", default=None, type=picture_output,
                           help="PNG picture to write (default: none)")
    attribute.add_argument("--save", default=None, metavar="MAPS.npz", type=npz_output,
                           help="write maps, inputs and recipe (.npz)")
    attribute.add_argument("--normalization", default="method", choices=("method", "each", "all"),
                           help="panel colour scale: one per method across images (default), per map, or shared")
    attribute.add_argument("--columns", type=int, default=None, help="wrap panel rows after N tiles (default: 5 when "
                                                                        "more than 5 methods)")
    attribute.add_argument("--cell", type=int, default=None, help="panel tile size in pixels")
    attribute.add_argument("--no-eval", action="store_true", help="skip the deletion/insertion scores")
    attribute.add_argument("--json", action="store_true", help="print results as JSON")
    attribute.set_defaults(handler=run_attribute)

    evaluate = sub.add_parser(
        "evaluate-attribution", help="how faithful and how sane each attribution method is on a dataset",
        description="Per method: deletion AUC (lower is better), insertion AUC (higher is better), the Spearman "
                    "correlation of maps after randomizing every layer (near 0 is good; > 0.5 is flagged) and "
                    "the time per image.")
    add_model_args(evaluate)
    evaluate.add_argument("--data", required=True, help="fashion-mnist, mnist, an image folder, a .npz or IDX file")
    evaluate.add_argument("--methods", default=",".join(NAMES),
                          help=f"comma-separated, from {','.join(NAMES)}")
    evaluate.add_argument("--limit", type=int, default=16, help="images to evaluate (default 16)")
    evaluate.add_argument("--randomize-limit", type=int, default=4,
                          help="images for the randomization check (default 4)")
    evaluate.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    _add_method_args(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print results as JSON")
    evaluate.set_defaults(handler=run_evaluate)


def _add_method_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=None, help="class index, class name ('tabby') or unit LAYER:CH "
                                                       "(default: the predicted class)")
    parser.add_argument("--layer", default=None, help="Grad-CAM layer (default: the last spatial layer)")
    parser.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps (default 32)")
    parser.add_argument("--samples", type=int, default=25, help="SmoothGrad samples (default 25)")
    parser.add_argument("--noise", type=float, default=0.15, help="SmoothGrad noise level (default 0.15)")
    parser.add_argument("--window", type=int, default=None, help="occlusion window in pixels (default 16)")
    parser.add_argument("--stride", type=int, default=None, help="occlusion stride in pixels (default 8)")
    parser.add_argument("--curve-steps", type=int, default=20, help="deletion/insertion steps (default 20)")


def _target(text: str | None) -> Any:
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _method(name: str):
    from .. import attribution

    if name not in attribution.METHODS:
        raise OptionError(f"unknown method {name!r}; choose from {', '.join(NAMES)}")
    return attribution.METHODS[name]


def _options(name: str, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    if name in ("gradcam", "guided-gradcam"):
        return {"layer": args.layer}
    if name == "smoothgrad":
        return {"samples": args.samples, "noise_level": args.noise, "seed": args.seed,
                "batch_size": max(batch, 32)}
    if name == "ig":
        return {"steps": args.steps, "internal_batch_size": max(batch, 32)}
    if name == "occlusion":
        return {k: v for k, v in (("window", args.window), ("stride", args.stride)) if v is not None}
    return {}


def _run(name: str, spec, x, args: argparse.Namespace, target: Any = "from-args"):
    target = _target(args.target) if target == "from-args" else target
    return _method(name)(spec, x, target, **_options(name, args, x.shape[0]))


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


def run_attribute(args: argparse.Namespace) -> int:
    import torch

    from ..attribution import evaluate
    from ..render.overlay import attribution_panel

    spec = load_spec(args)
    x = torch.cat([spec.preprocess(path) for path in args.images])
    names = list(NAMES) if args.method == "all" else [args.method]
    results = {name: _run(name, spec, x, args) for name in names}
    scores: dict[str, dict[str, list[float]]] = {}
    if not args.no_eval:
        for name, result in results.items():
            scores[name] = {kind: getattr(evaluate, kind)(spec, result, steps=args.curve_steps)
                            .auc.tolist() for kind in ("deletion", "insertion")}
    if args.output:
        first = next(iter(results.values()))
        if len(results) == 1 and len(args.images) == 1:
            first.save(args.output)
        else:
            probabilities = _probabilities(spec, x)
            captions = [[f"del {scores[n]['deletion'][b]:.3f}  ins {scores[n]['insertion'][b]:.3f}"
                         if n in scores else "" for b in range(len(args.images))] for n in results]
            labels = [f"{Path(p).name}\n{_class_label(spec, first, b, probabilities)}"
                      for b, p in enumerate(args.images)]
            panel = attribution_panel(list(results.values()), captions=captions, image_labels=labels,
                                      normalization=args.normalization, title=spec.name,
                                      columns=args.columns or (5 if len(results) > 5 else None),
                                      cell=args.cell)
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            panel.save(args.output)
    if args.save:
        _save_npz(args.save, results)
    rows = [{"image": path, "methods": {
        name: {"class": None if r.classes is None else int(r.classes[b]),
               "class_name": None if r.classes is None else spec.class_name(int(r.classes[b])),
               "score": float(r.scores[b]),
               **({f"{k}_auc": v[b] for k, v in scores[name].items()} if name in scores else {})}
        for name, r in results.items()}} for b, path in enumerate(args.images)]
    if args.json:
        print_json({"model": spec.name, "images": rows, "output": args.output, "save": args.save})
        return 0
    for row in rows:
        print(row["image"])
        for name, info in row["methods"].items():
            extra = "" if "deletion_auc" not in info else \
                f"  deletion AUC {info['deletion_auc']:.3f}  insertion AUC {info['insertion_auc']:.3f}"
            label = info["class_name"] or args.target
            print(f"  {name:<15} {label!s:<24} score {info['score']:.4g}{extra}")
    if args.output:
        print(f"wrote {args.output}")
    return 0


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


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from ..attribution import evaluate
    from ..data import batches, resolve

    spec = load_spec(args)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    for name in names:
        _method(name)
    dataset = resolve(args.data, channels=spec.channels)
    table = {n: {"deletion": [], "insertion": [], "seconds": 0.0, "images": 0, "randomization": None} for n in names}
    kept = []
    for batch in batches(dataset, spec, args.batch_size, limit=args.limit):
        x = batch.inputs
        if not kept:  # warm up (thread pools, kernel choice) so the first method is not charged
            _run(names[0], spec, x[:1], args)
        kept.append(x)
        for name in names:
            start = time.perf_counter()
            result = _run(name, spec, x, args)
            table[name]["seconds"] += time.perf_counter() - start
            table[name]["images"] += x.shape[0]
            for kind in ("deletion", "insertion"):  # the target comes from the result (class or unit)
                curves = getattr(evaluate, kind)(spec, result, steps=args.curve_steps)
                table[name][kind] += curves.auc.tolist()
    if not kept:
        raise ConvscopeError(f"no readable images in {args.data!r}")
    sample = torch.cat(kept)[: max(1, args.randomize_limit)]
    for name in names:
        check = evaluate.randomization(spec, _method(name), sample, _target(args.target), checkpoints=1,
                                       seed=args.seed, options=_options(name, args, sample.shape[0]))
        table[name]["randomization"] = {"correlation": check.final, "flagged": check.flagged}
    summary = {name: {"deletion_auc": _mean(row["deletion"]), "insertion_auc": _mean(row["insertion"]),
                      "randomization_correlation": row["randomization"]["correlation"],
                      "flagged": row["randomization"]["flagged"],
                      "ms_per_image": 1000 * row["seconds"] / max(row["images"], 1), "images": row["images"]}
               for name, row in table.items()}
    if args.json:
        print_json({"model": spec.name, "data": str(args.data), "methods": summary})
        return 0
    print(f"{spec.name} on {args.data} ({summary[names[0]]['images']} images; randomization on {sample.shape[0]})")
    print(f"{'method':<16}{'deletion AUC (lower better)':>28}{'insertion AUC (higher better)':>31}"
          f"{'rand. corr (near 0 good)':>26}{'ms/image':>10}")
    for name, row in summary.items():
        flag = " FLAGGED" if row["flagged"] else ""
        print(f"{name:<16}{row['deletion_auc']:>28.3f}{row['insertion_auc']:>31.3f}"
              f"{row['randomization_correlation']:>26.2f}{row['ms_per_image']:>10.1f}{flag}")
    return 0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
