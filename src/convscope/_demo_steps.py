"""The demo's steps, in gallery order. Each runs the README's CLI commands in-process, so the gallery shows exactly
what those commands make, and returns [(file name in the output folder, caption)]; `.txt` files are shown as text.
"""

from __future__ import annotations

import contextlib
import io
import shlex

from .demo import DemoContext, Skip, step

MOBILENET = "torchvision:mobilenet_v2@IMAGENET1K_V1"
FASHION = "convscope:fashion-cnn"


def cli(ctx: DemoContext, command: str, *, text: str | None = None) -> str:
    """Run `convscope COMMAND` in-process (paths relative to the output folder); raise if it fails. With `text`,
    the command's standard output is also written to that file in the output folder."""
    from .cli import main

    args = [a.replace("{out}", str(ctx.out)) for a in shlex.split(command)]
    if ctx.device:
        args = ["--device", ctx.device, *args]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(args)
    output = buffer.getvalue()
    if code != 0:
        raise RuntimeError(f"`convscope {command}` exited {code}\n{output}")
    if text:
        (ctx.out / text).write_text(f"$ convscope {command.replace('{out}/', '')}\n{output}")
    return output


def _dataset(name: str):
    """Dataset `name` (its test split where it has one); skip the step when it is not installed here."""
    from .data import resolve
    from .errors import DatasetError

    try:
        return resolve(name, split="test")
    except DatasetError as error:
        raise Skip(str(error)) from None


def fashion_image(ctx: DemoContext, index: int = 0) -> str:
    """Save Fashion-MNIST test image `index` as a PNG in the output folder and return its path."""
    from PIL import Image

    path = ctx.out / "inputs" / f"fashion-{index}.png"
    if not path.exists():
        dataset = _dataset("fashion-mnist")
        pixels, _label = dataset[index]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels[0].numpy() * 255).round().astype("uint8"), "L").save(path)
    return str(path)


def steps(ctx: DemoContext, full: int, quick: int) -> int:
    return quick if ctx.quick else full


@step("Predict: MobileNetV2 (ImageNet weights, offline) on a photo")
def predict(ctx: DemoContext):
    cat = ctx.photo("chelsea")
    cli(ctx, f"predict {MOBILENET} {cat} --top 5", text="predict.txt")
    return [("predict.txt", "`convscope predict` on scikit-image's chelsea: the top classes are cats.")]


@step("Layers: names, output shapes, receptive fields")
def layers(ctx: DemoContext):
    output = cli(ctx, f"layers {FASHION}", text="layers.txt")
    if not output.strip():
        raise RuntimeError("layers printed nothing")
    return [("layers.txt", "`convscope layers convscope:fashion-cnn`: every addressable layer.")]


@step("Activations: feature maps of the first layers")
def activations(ctx: DemoContext):
    shoe = fashion_image(ctx, 0)
    cli(ctx, f"activations {FASHION} {shoe} --layer conv1 -o {{out}}/activations-fashion-conv1.png")
    cli(ctx, f"activations {MOBILENET} {ctx.photo('chelsea')} --layer features.1 -o {{out}}/activations-mobilenet.png")
    return [("activations-fashion-conv1.png", "The 32 feature maps of conv1 of the built-in Fashion-MNIST CNN."),
            ("activations-mobilenet.png", "MobileNetV2 `features.1` on the cat photo.")]


@step("Filters: first-layer filters in colour, deeper filters per input channel")
def filters(ctx: DemoContext):
    cli(ctx, f"filters {MOBILENET} --layer features.0.0 -o {{out}}/filters-mobilenet.png")
    cli(ctx, f"filters {FASHION} --layer conv1 -o {{out}}/filters-fashion-conv1.png")
    return [("filters-mobilenet.png", "MobileNetV2's 32 first-layer filters, in colour."),
            ("filters-fashion-conv1.png", "conv1 filters of the Fashion-MNIST CNN with their smoothness scores.")]


@step("Attribution: every method on one photo, with deletion/insertion scores")
def attribution(ctx: DemoContext):
    cat = ctx.photo("chelsea")
    cli(ctx, f"attribute {MOBILENET} {cat} --method all -o {{out}}/attribution-all.png")
    return [("attribution-all.png", "All attribution methods for MobileNetV2's top class on the cat photo.")]


@step("Attribution: can the maps be trusted?")
def attribution_eval(ctx: DemoContext):
    limit = steps(ctx, 32, 8)
    cli(ctx, f"evaluate-attribution {FASHION} --data fashion-mnist --limit {limit}", text="attribution-eval.txt")
    return [("attribution-eval.txt", "Deletion/insertion AUC and the model-randomization check per method.")]


@step("Feature visualization: a whole layer of the built-in CNN")
def visualize_layer(ctx: DemoContext):
    n = steps(ctx, 256, 32)
    cli(ctx, f"visualize {FASHION} --layer conv2 --units 0-63 --steps {n} -o {{out}}/visualize-fashion-conv2.png")
    return [("visualize-fashion-conv2.png", "What each of the 64 conv2 channels of the Fashion-MNIST CNN wants to see.")]


@step("Feature visualization: a MobileNetV2 channel with octaves")
def visualize_channel(ctx: DemoContext):
    n = steps(ctx, 128, 16)
    cli(ctx, f"visualize {MOBILENET} --layer features.10 --unit 7 --octaves 3 --steps {n} "
             f"-o {{out}}/visualize-mobilenet.png")
    return [("visualize-mobilenet.png", "MobileNetV2 features.10, channel 7, Fourier parameterization with octaves.")]


@step("Class model: goldfish")
def class_model(ctx: DemoContext):
    n = steps(ctx, 128, 16)
    cli(ctx, f"class-model {MOBILENET} --target goldfish --param fourier --optimizer adam --steps {n} "
             f"-o {{out}}/class-goldfish.png")
    return [("class-goldfish.png", "A class model of 'goldfish' for MobileNetV2 (Simonyan et al.'s objective, "
                                   "Fourier parameterization with decorrelated colour).")]


@step("DeepDream from a photo")
def dream(ctx: DemoContext):
    n = steps(ctx, 10, 2)
    cli(ctx, f"dream {MOBILENET} {ctx.photo('chelsea')} --layer features.7 --steps {n} -o {{out}}/dream.png")
    return [("dream.png", "DeepDream of the cat photo at MobileNetV2 features.7.")]


@step("Feature inversion")
def invert(ctx: DemoContext):
    n = steps(ctx, 200, 20)
    cli(ctx, f"invert {MOBILENET} {ctx.photo('chelsea')} --layer features.4 --steps {n} -o {{out}}/invert.png",
        text="invert.txt")
    return [("invert.png", "The cat reconstructed from MobileNetV2's features.4 code (Mahendran & Vedaldi)."),
            ("invert.txt", "The relative code error reached.")]


@step("Adversarial: a fooling image")
def adversarial(ctx: DemoContext):
    cli(ctx, f"adversarial {MOBILENET} {ctx.photo('chelsea')} --target goldfish --eps 0.008 "
             f"-o {{out}}/adversarial.png")
    return [("adversarial.png", "PGD toward 'goldfish': original, perturbation magnified, adversarial image.")]


@step("Invariances from the Hessian")
def invariances(ctx: DemoContext):
    n = steps(ctx, 128, 16)
    cli(ctx, f"invariances {FASHION} --layer conv2 --unit 12 --steps {n} -o {{out}}/invariances.png")
    return [("invariances.png", "Fashion-MNIST CNN conv2:12 at its optimum, moved along the flattest and steepest "
                                "Hessian directions.")]


def _drop(ctx: DemoContext, *names: str) -> None:
    """Remove side files the gallery does not show (the .npz coordinates and thumbnails beside a picture)."""
    for name in names:
        (ctx.out / name).unlink(missing_ok=True)


UNITS = (5, 12, 33)


@step("Dataset analysis: top-9 images, patches and projections per unit")
def topk(ctx: DemoContext):
    _dataset("fashion-mnist")
    limit = "--limit 2000 " if ctx.quick else ""
    cli(ctx, f"topk {FASHION} --data fashion-mnist {limit}--layers conv2 --units {','.join(map(str, UNITS))} "
             f"-o {{out}}/topk-fashion")
    return [(f"topk-fashion/conv2/unit-{u}.png",
             f"Fashion-MNIST CNN conv2:{u}: the 9 test images it fires on most, their receptive-field patches, "
             f"DeconvNet and guided-backprop projections, and the class purity of the nine.") for u in UNITS]


@step("Dataset analysis: statistics and dead units")
def stats(ctx: DemoContext):
    _dataset("fashion-mnist")
    limit = "--limit 2000 " if ctx.quick else ""
    cli(ctx, f"stats {FASHION} --data fashion-mnist {limit}--layers conv1,conv2,fc1,fc2 -o {{out}}/stats-fashion",
        text="stats-fashion.txt")
    return [("stats-fashion/stats.png", "Per-unit statistics of the Fashion-MNIST CNN over the test images: how often "
                                        "each unit is active, dead units marked."),
            ("stats-fashion.txt", "The per-layer summary `convscope stats` prints.")]


@step("Dataset analysis: t-SNE grids of CNN codes")
def tsne(ctx: DemoContext):
    _dataset("fashion-mnist")
    n = steps(ctx, 1000, 200)
    cli(ctx, f"tsne {FASHION} --data fashion-mnist --limit {n} -o {{out}}/tsne-fashion.png")
    _drop(ctx, "tsne-fashion.npz")
    shown = [("tsne-fashion.png", "t-SNE of the Fashion-MNIST CNN's codes (the input of its last linear layer), each "
                                  "image snapped to a grid cell, borders coloured by class.")]
    try:
        _dataset("photos")
    except Skip:
        return shown
    cli(ctx, f"tsne {MOBILENET} --data photos --limit {n} --size 1024 -o {{out}}/tsne-photos.png")
    _drop(ctx, "tsne-photos.npz")
    _credit_photos(ctx)
    return shown + [("tsne-photos.png", "t-SNE of MobileNetV2's codes on crops of 34 photographs (classes: the source "
                                        "photo); credits in tsne-photos-credits.md.")]


def _credit_photos(ctx: DemoContext) -> None:
    """The crops keep their photographs' licences: credit them beside the picture."""
    import re

    from .data.photos import photos_folder

    credits = photos_folder() / "CREDITS.md"
    lines = credits.read_text().splitlines()[2:] if credits.is_file() else []
    head = ("# Credits for the photo crops in tsne-photos.png\n\n"
            "tsne-photos.png shows crops of the `photos` dataset (src/convscope/data/photos.py); each crop is a "
            "derived work of its source photograph and carries that photograph's licence (CC-BY-SA and GPL-2+ "
            "sources: the picture is shared under the same terms). Written by the dataset builder as CREDITS.md:\n\n")
    body = "\n".join(re.sub(r"/[^ ]*/site-packages/", "site-packages/", line) for line in lines)
    (ctx.out / "tsne-photos-credits.md").write_text(head + body + "\n")


@step("Dataset analysis: linear probes per layer")
def probe(ctx: DemoContext):
    _dataset("fashion-mnist")
    n = steps(ctx, 2000, 400)
    cli(ctx, f"probe {FASHION} --data fashion-mnist --train-data fashion-mnist --limit {n} "
             f"-o {{out}}/probe-fashion.png", text="probe-fashion.txt")
    _drop(ctx, "probe-fashion.npz")
    shown = [("probe-fashion.png", "Held-out accuracy of a linear probe on each layer's pooled codes (Fashion-MNIST "
                                   "CNN): where the classes become linearly separable."),
             ("probe-fashion.txt", "The table `convscope probe` prints.")]
    try:
        _dataset("photos")
    except Skip:
        return shown
    cli(ctx, f"probe {MOBILENET} --data photos --limit {steps(ctx, 1700, 340)} -o {{out}}/probe-photos.png",
        text="probe-photos.txt")
    _drop(ctx, "probe-photos.npz")
    return shown + [("probe-photos.png", "The same for MobileNetV2 on the photo crops (classes: the 34 photos)."),
                    ("probe-photos.txt", "The table `convscope probe` prints.")]
