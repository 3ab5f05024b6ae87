"""`convscope models`, `convscope predict`, `convscope evaluate`: what can be loaded, what a model says, how
accurate it is."""

from __future__ import annotations

import argparse

from ._common import add_model_args, for_each_file, load_spec, positive_int, print_json, progress


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list the model names convscope knows",
                            description="Built-in convscope models, torchvision classification models with their "
                                        "weights, and timm (when installed).")
    models.add_argument("--json", action="store_true", help="print as JSON")
    models.set_defaults(handler=run_models)

    predict = sub.add_parser("predict", help="top classes of images", description="Classify images: the most "
                             "probable classes with names and probabilities.")
    add_model_args(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict.add_argument("--top", type=positive_int, default=5, help="classes per image (default 5)")
    predict.add_argument("--json", action="store_true", help="print as JSON")
    predict.set_defaults(handler=run_predict)

    evaluate = sub.add_parser("evaluate", help="accuracy on a labelled dataset",
                              description="Top-1, top-5 and per-class accuracy on a labelled dataset.")
    add_model_args(evaluate)
    evaluate.add_argument("--data", required=True, help="fashion-mnist, mnist (test split), an image folder (one "
                                                        "sub-folder per class), a .npz or an IDX file")
    evaluate.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N items")
    evaluate.add_argument("--batch-size", type=positive_int, default=64, help="default 64")
    evaluate.add_argument("--json", action="store_true", help="print as JSON")
    evaluate.set_defaults(handler=run_evaluate)


def run_models(args: argparse.Namespace) -> int:
    from torchvision.models import get_model_weights

    from ..models.hubs import timm_names, torchvision_names
    from ..models.registry import registered

    builtin = [{"name": f"convscope:{e.name}", "description": e.description} for e in registered()]
    tv = [{"name": f"torchvision:{n}", "weights": [w.name for w in get_model_weights(n)]}
          for n in torchvision_names()]
    timm = timm_names()
    if args.json:
        print_json({"convscope": builtin, "torchvision": tv, "timm": list(timm) if timm is not None else None})
        return 0
    print("convscope (built-in):")
    for entry in builtin:
        print(f"  {entry['name']:<24} {entry['description']}")
    print(f"\ntorchvision ({len(tv)} classification models; random init, or NAME@WEIGHTS for pretrained):")
    for entry in tv:
        print(f"  {entry['name']:<40} @{' @'.join(entry['weights'])}")
    if timm is None:
        print("\ntimm: not installed (pip install 'convscope[timm]' for timm:NAME models)")
    else:
        print(f"\ntimm: {len(timm)} models, e.g. timm:resnet50 (random init) or timm:resnet50@default (pretrained); "
              "list them with timm.list_models()")
    print("\nAlso: a TorchScript file, FILE.safetensors|.pth [--arch MODELSTRING], or path/to/file.py:function.")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Every readable image is classified and printed; each unreadable one is reported by name on stderr, and the
    exit code is 2 when any failed."""
    from ..models.predict import predict

    spec = load_spec(args)

    def one(path: str):
        result = predict(spec, path, top=args.top)
        if not args.json:
            for row in result.rows():
                print(row["input"])
                for item in row["top"]:
                    print(f"  {item['rank']:>2}. {item['name']:<32} {item['prob']:.4f}  (class {item['index']})")
        return result

    done, failed = for_each_file(args.images, one)
    if args.json:
        rows = [row for _, result in done for row in result.rows()]
        recipe = done[-1][1].recipe.to_dict() if done else None
        if recipe:
            recipe["params"]["inputs"] = [row["input"] for row in rows]
        print_json({"predictions": rows, "failed": [{"input": path, "error": str(error)} for path, error in failed],
                    "recipe": recipe})
    return 2 if failed else 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..data import resolve
    from ..models.predict import evaluate

    spec = load_spec(args)
    data = resolve(args.data, split="test", channels=spec.channels)
    total = min(len(data), args.limit) if args.limit is not None else len(data)
    with progress("evaluating", total=total) as bar:
        task = bar.add_task("evaluating", total=total)
        result = evaluate(spec, data, batch_size=args.batch_size, limit=args.limit,
                          progress=lambda n: bar.advance(task, n))
    if args.json:
        print_json(result.to_dict())
        return 0
    print(f"{spec.name} on {data.name}: {result.count} items")
    print(f"  top-1 accuracy {result.top1:.4f}")
    print(f"  top-5 accuracy {result.top5:.4f}")
    print("  per class:")
    for (name, accuracy), total_items in zip(result.per_class().items(), result.total.tolist()):
        shown = "   n/a" if accuracy is None else f"{accuracy:.4f}"
        print(f"    {name:<24} {shown}  ({total_items} items)")
    if result.skipped:
        print(f"  skipped {len(result.skipped)} unreadable items:")
        for item, reason in result.skipped[:20]:
            print(f"    {item}: {reason}")
    return 0
