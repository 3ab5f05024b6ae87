"""The demo atlases (`make demo`, `convscope demo`): every unit of the built-in CNN's conv layers, and a few units per
layer of ImageNet MobileNetV2 on the `photos` crops. Each is the `convscope atlas build` command shown in the README, run in-process;
a second run finds everything stored and only checks (seconds).
"""

from __future__ import annotations

import shlex
from pathlib import Path

__all__ = ["DEMO", "build_demo", "photo_folder"]

MOBILENET = "torchvision:mobilenet_v2@IMAGENET1K_V1"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "hubble_deep_field",
          "immunohistochemistry")

# (folder name, `convscope atlas build` arguments without -o; {photos} is the photo folder)
DEMO: tuple[tuple[str, str], ...] = (
    ("fashion-cnn", "convscope:fashion-cnn --data fashion-mnist --units all "
                    "--checkpoints convscope:small-cnn convscope:fashion-cnn --steps 256"),
    ("mobilenet_v2", f"{MOBILENET} --data {{photos}} --layers features.4,features.7,features.10,features.14 "
                     "--units-per-layer 8 --chunk 8 --classes goldfish,tabby,volcano --steps 256"),
)


def photo_folder(root: Path) -> Path:
    """An image folder of scikit-image's sample photos (one class, "photos"), where the `photos` dataset is not built."""
    folder = root / "photos"
    target = folder / "photos"
    if not target.is_dir() or not any(target.iterdir()):
        import skimage.data
        from PIL import Image

        target.mkdir(parents=True, exist_ok=True)
        for name in PHOTOS:
            if hasattr(skimage.data, name):
                pixels = getattr(skimage.data, name)()
                Image.fromarray(pixels[..., :3] if pixels.ndim == 3 else pixels).convert("RGB").save(
                    target / f"{name}.png")
    return folder


def _photos(root: Path) -> str:
    """The `photos` dataset (setup.sh builds it: `python -m convscope.data.photos`), else scikit-image's photos."""
    from ..data import resolve
    from ..errors import DatasetError

    try:
        resolve("photos")
        return "photos"
    except DatasetError:
        return str(photo_folder(root))


def build_demo(root: str | Path = "atlas", *, device: str | None = None, quick: bool = False) -> list[Path]:
    """Build (or finish, or just check) the demo atlases below `root`; return the folders that are ready.

    `quick`: few render steps and units, into `root`/quick-* (a smoke test; never mixed with the real atlases).
    """
    from ..cli import main

    root = Path(root)
    ready = []
    for name, arguments in DEMO:
        folder = root / (f"quick-{name}" if quick else name)
        args = shlex.split(arguments.replace("{photos}", _photos(root)))
        if quick:
            args[args.index("--steps") + 1] = "8"
            if "--units" in args:
                at = args.index("--units")
                args[at: at + 2] = ["--units-per-layer", "4"]
            else:
                args[args.index("--units-per-layer") + 1] = "2"
        command = ["atlas", "build", *args, "-o", str(folder)]
        if device:
            command = ["--device", device, *command]
        print(f"demo: convscope {shlex.join(command)}", flush=True)
        code = main(command)  # prints its own one-line errors
        if code == 0:
            ready.append(folder)
        else:
            print(f"demo: atlas {name} was not built (exit {code}); the others are served", flush=True)
    return ready
