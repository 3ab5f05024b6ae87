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


def fashion_image(ctx: DemoContext, index: int = 0) -> str:
    """Save Fashion-MNIST test image `index` as a PNG in the output folder and return its path."""
    from PIL import Image

    from .data import resolve
    from .errors import DatasetError

    path = ctx.out / "inputs" / f"fashion-{index}.png"
    if not path.exists():
        try:
            dataset = resolve("fashion-mnist", split="test")
        except DatasetError as error:
            raise Skip(str(error)) from None
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
