"""`convscope evaluate-attribution`: per method, deletion/insertion AUC, the model-randomization cascade and the
time per image over a dataset."""

from __future__ import annotations

import argparse
import math
import time

from ..errors import ConvscopeError, OptionError
from ._attribute import NAMES, add_method_args, check_precision, method, method_names, options, run_method, \
    target_arg
from ._common import add_model_args, load_spec, print_json, progress


def register(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "evaluate-attribution", help="how faithful and how sane each attribution method is on a dataset",
        description="Per method: deletion AUC (lower is better), insertion AUC (higher is better), the "
                    "randomization cascade (Adebayo et al.: the model's layers randomized from the top down; the "
                    "largest mean |Spearman rho| between a map and its original anywhere in the cascade, near 0 "
                    "is good, above 0.5 is FLAGGED, with the deepest layer the map survives) and the time per "
                    "image.")
    add_model_args(evaluate)
    evaluate.add_argument("--data", required=True, help="fashion-mnist, mnist, an image folder, a .npz or IDX file")
    evaluate.add_argument("--methods", default=",".join(NAMES),
                          help=f"comma-separated, from {','.join(NAMES)} (or all)")
    evaluate.add_argument("--limit", type=int, default=16, help="images to evaluate (default 16)")
    evaluate.add_argument("--randomize-limit", type=int, default=4,
                          help="images for the randomization check (default 4)")
    evaluate.add_argument("--checkpoints", type=int, default=6,
                          help="points of the randomization cascade, top layer to all layers (default 6)")
    evaluate.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    add_method_args(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print results as JSON")
    evaluate.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from ..attribution import evaluate
    from ..data import batches, resolve

    names = method_names(args.methods)
    check_precision(names, args.precision)
    if args.checkpoints < 1:
        raise OptionError(f"--checkpoints must be at least 1, got {args.checkpoints}")
    spec = load_spec(args)
    dataset = resolve(args.data, channels=spec.channels)
    table = {n: {"deletion": [], "insertion": [], "seconds": 0.0, "images": 0, "randomization": None} for n in names}
    kept = []
    try:
        count = min(len(dataset), args.limit)
    except TypeError:  # a dataset without a length
        count = args.limit
    total = (math.ceil(count / args.batch_size) + 1) * len(names)
    with progress("evaluate-attribution") as bar:
        task = bar.add_task("evaluate-attribution", total=total)
        for batch in batches(dataset, spec, args.batch_size, limit=args.limit):
            x = batch.inputs
            if not kept:  # warm up (thread pools, kernel choice) so the first method is not charged
                run_method(names[0], spec, x[:1], args)
            kept.append(x)
            for name in names:
                bar.update(task, description=f"{name}: {sum(k.shape[0] for k in kept)} images")
                start = time.perf_counter()
                result = run_method(name, spec, x, args)
                table[name]["seconds"] += time.perf_counter() - start
                table[name]["images"] += x.shape[0]
                for kind in ("deletion", "insertion"):  # the target comes from the result (class or unit)
                    curves = getattr(evaluate, kind)(spec, result, steps=args.curve_steps)
                    table[name][kind] += curves.auc.tolist()
                bar.advance(task)
        if not kept:
            raise ConvscopeError(f"no readable images in {args.data!r}")
        sample = torch.cat(kept)[: max(1, args.randomize_limit)]
        for name in names:
            bar.update(task, description=f"{name}: randomization cascade")
            check = evaluate.randomization(spec, method(name), sample, target_arg(args.target),
                                           checkpoints=args.checkpoints, seed=args.seed,
                                           options=options(name, args, sample.shape[0]))
            table[name]["randomization"] = check
            bar.advance(task)
        bar.update(task, completed=total)
    summary = {name: _row(row) for name, row in table.items()}
    if args.json:
        print_json({"model": spec.name, "data": str(args.data), "methods": summary})
        return 0
    print(f"{spec.name} on {args.data} ({summary[names[0]]['images']} images; randomization cascade on "
          f"{sample.shape[0]}, {args.checkpoints} checkpoints)")
    print(f"{'method':<16}{'deletion AUC':>13}{'insertion AUC':>14}{'rand. max |rho|':>16}  {'survives to':<22}"
          f"{'ms/image':>9}")
    print(f"{'':<16}{'(lower better)':>13}{'(higher better)':>14}{'(near 0 good)':>16}")
    for name, row in summary.items():
        flag = " FLAGGED" if row["flagged"] else ""
        print(f"{name:<16}{row['deletion_auc']:>13.3f}{row['insertion_auc']:>14.3f}"
              f"{row['randomization_similarity']:>16.2f}  {row['survives_to'] or '-':<22}"
              f"{row['ms_per_image']:>9.1f}{flag}")
    return 0


def _row(row: dict) -> dict:
    check = row["randomization"]
    return {"deletion_auc": _mean(row["deletion"]), "insertion_auc": _mean(row["insertion"]),
            "randomization_similarity": check.worst, "survives_to": check.survives_to,
            "randomization_cascade": {"layers": check.layers, "depth": check.depth,
                                      "mean_abs_rho": check.curve.tolist(),
                                      "mean_rho": check.correlations.mean(1).tolist()},
            "randomization_correlation": check.final, "flagged": check.flagged,
            "ms_per_image": 1000 * row["seconds"] / max(row["images"], 1), "images": row["images"]}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
