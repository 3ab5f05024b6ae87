"""The `photos` dataset: a few thousand colour crops of real photographs that install offline, one class per photo.

No colour image dataset can be downloaded on our machines, so this builds one from photographs that come with
packages: scikit-image's and scikit-learn's sample photos (PyPI) and the photographs among Debian's desktop
backgrounds (`mate-backgrounds`: its `nature/` set; `lomiri-wallpapers-16.04`: the photographs of its 2018
wallpaper contest). Each photo gives `crops` square crops (seeded random position and size, 30-100% of the
photo's shorter side) resized to `size` x `size`, saved as JPEG in a sub-folder named after the photo, so the
label of a crop is its source photo. `manifest.json` records every crop's source file and box (in the source's
pixels), and `CREDITS.md` each photo's author and licence.

`build_photos()` is deterministic (the same sources give the same crops; a source's crops do not depend on which
other sources are present) and idempotent (a folder that matches the plan is left alone). Sources that are not
installed are skipped and reported. Build with `python -m convscope.data.photos` (or `scripts/build_photos.py`);
`resolve("photos")` then finds the folder in `data_root()/photos`.

Left out after looking: Debian 12's `gnome-backgrounds` (43.x) holds only drawn and rendered art, no photographs;
the other pictures of the two Debian packages are abstract art; skimage's `motorcycle_left` (Middlebury stereo
set) states no licence.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError

__all__ = ["PhotoSource", "PHOTO_SOURCES", "available_sources", "build_photos", "photos_dataset", "photos_folder",
           "main"]

FORMAT = 1
_SCALE = (0.3, 1.0)
_WORK_SIDE = 1024  # big photos are decoded and reduced to about this shorter side before cropping


@dataclass(frozen=True)
class PhotoSource:
    """One photograph: `name` (its class folder), where it lives (`package` and `path`: a path inside an installed
    Python package's folder, or an absolute path of a Debian package's file), its `licence` and `credit`."""

    name: str
    package: str
    path: str
    licence: str
    credit: str

    def locate(self) -> Path | None:
        """The file, or `None` when its package is not installed."""
        if self.path.startswith("/"):
            found = Path(self.path)
        else:
            spec = importlib.util.find_spec(self.package.split()[0])
            if spec is None or not spec.submodule_search_locations:
                return None
            found = Path(list(spec.submodule_search_locations)[0]) / self.path
        return found if found.is_file() else None


_SK = "skimage (scikit-image)"
_SKL = "sklearn (scikit-learn)"
_MATE = "mate-backgrounds (Debian)"
_MATE_DIR = "/usr/share/backgrounds/mate/nature/"
_LOMIRI = "lomiri-wallpapers-16.04 (Debian)"
_LOMIRI_DIR = "/usr/share/backgrounds/"


def _mate(name: str, credit: str) -> PhotoSource:
    return PhotoSource(f"mate-{name.lower()}", _MATE, f"{_MATE_DIR}{name}.jpg", "GPL-2+", credit)


def _lomiri(stem: str, licence: str, credit: str) -> PhotoSource:
    return PhotoSource(f"lomiri-{stem.split('_by_')[0].lower()}", _LOMIRI, f"{_LOMIRI_DIR}{stem}.jpg", licence,
                       credit)


PHOTO_SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", _SK, "data/astronaut.png", "public domain", "NASA (Eileen Collins)"),
    PhotoSource("chelsea", _SK, "data/chelsea.png", "CC0-1.0", "Stefan van der Walt"),
    PhotoSource("coffee", _SK, "data/coffee.png", "CC0-1.0", "Rachel Michetti"),
    PhotoSource("rocket", _SK, "data/rocket.jpg", "public domain", "SpaceX"),
    PhotoSource("hubble", _SK, "data/hubble_deep_field.jpg", "public domain", "NASA, HubbleSite"),
    PhotoSource("ihc", _SK, "data/ihc.png", "no known copyright restrictions",
                "Center for Microscopy And Molecular Imaging (CMMI)"),
    PhotoSource("retina", _SK, "data/retina.jpg", "CC0-1.0", "Mikael Häggström"),
    PhotoSource("china", _SKL, "datasets/images/china.jpg", "CC-BY-2.0", "danielbuechele (Flickr)"),
    PhotoSource("flower", _SKL, "datasets/images/flower.jpg", "CC-BY-2.0", "vultilion (Flickr)"),
    _mate("Aqua", "Charles Barbin"),
    _mate("Blinds", "Lennart Poettering, Andrea Cimitan"),
    _mate("Dune", "Marco Cogoni, Hylke Bons"),
    _mate("FreshFlower", "Jens Ansorg"),
    _mate("Garden", "Charles Barbin"),
    _mate("GreenMeadow", "Timothy Schellhase, Lapo Calamandrei"),
    _mate("LadyBird", "Charles Barbin"),
    _mate("RainDrops", "blackcombwhistler07"),
    _mate("Storm", "Sergey Nazarov"),
    _mate("TwoWings", "Charles Barbin, Hylke Bons"),
    _mate("Wood", "Jean-François Fortin Tam"),
    _mate("YellowFlower", "Charles Barbin"),
    _lomiri("Bridge_by_Sander_Klootwijk", "CC-BY-SA-4.0", "Sander Klootwijk"),
    _lomiri("Dragonfly_by_Bolly", "CC-BY-SA-4.0", "Bolly"),
    _lomiri("Picture_0B_by_freespace", "CC-BY-4.0", "Trevor \"Freespace\""),
    _lomiri("Picture_1A_by_freespace", "CC-BY-4.0", "Trevor \"Freespace\""),
    _lomiri("Wine_by_Jakkub_Mede", "CC-BY-4.0", "Jakub Mede"),
    _lomiri("aitzgorri_by_Aitzol_Berasategi", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("free_by_Peter_Nerlich", "CC-BY-SA-4.0", "Peter Nerlich"),
    _lomiri("friends_by_Aitzol_Berasategi", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("greentock_by_Peter_Nerlich", "CC-BY-SA-4.0", "Peter Nerlich"),
    _lomiri("life_by_Aitzol_Berasategi", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("seeding_by_Clements_Engelhardt", "CC0-1.0", "Clemens Engelhardt"),
    _lomiri("sunset_by_Aitzol_Berasategi", "CC-BY-4.0", "Aitzol Berasategi"),
)


def photos_folder(root: str | Path | None = None) -> Path:
    """Where the dataset lives: `ROOT/photos`, ROOT defaulting to `convscope.data.data_root()`."""
    from .resolve import data_root

    return Path(root if root is not None else data_root()) / "photos"


def photos_dataset(root: str | Path | None = None, *, channels: int | None = None):
    """The built folder as an `ImageFolder` named "photos"; a clear error saying how to build it when absent."""
    from .datasets import ImageFolder

    folder = photos_folder(root)
    if not (folder / "manifest.json").is_file():
        raise DatasetError(f"the photos dataset is not built in {str(folder)!r}: run `python -m convscope.data.photos` "
                           "(or scripts/build_photos.py) to crop it from installed sample photos")
    dataset = ImageFolder(folder, channels=channels)
    dataset.name = "photos"
    return dataset


def available_sources(sources: Sequence[PhotoSource] = PHOTO_SOURCES) -> tuple[list[tuple[PhotoSource, Path]],
                                                                              list[PhotoSource]]:
    """(installed sources with their files, missing sources)."""
    found, missing = [], []
    for source in sources:
        path = source.locate()
        (found.append((source, path)) if path is not None else missing.append(source))
    return found, missing


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _working_image(path: Path):
    """The photo as RGB, reduced (JPEG: while decoding) so its shorter side is about `_WORK_SIDE`; and the factor
    from working pixels back to the file's pixels."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        if image.format == "JPEG" and min(width, height) > 2 * _WORK_SIDE:
            image.draft("RGB", (width * _WORK_SIDE // min(width, height), height * _WORK_SIDE // min(width, height)))
        work = image.convert("RGB")
    if min(work.size) > _WORK_SIDE * 1.5:
        factor = min(work.size) / _WORK_SIDE
        work = work.resize((round(work.width / factor), round(work.height / factor)), Image.BICUBIC)
    return work, (width / work.width, height / work.height), (width, height)


def _crop_boxes(name: str, seed: int, crops: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """`crops` square boxes (left, top, right, bottom) in a width x height image, seeded by the source's name (so
    adding or removing other sources does not move them)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    shorter = min(width, height)
    boxes = []
    for _ in range(crops):
        side = max(8, int(round(rng.uniform(*_SCALE) * shorter)))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        boxes.append((left, top, left + side, top + side))
    return boxes


def _plan(found: list[tuple[PhotoSource, Path]], crops: int, size: int, seed: int) -> dict:
    return {"format": FORMAT, "crops_per_photo": crops, "size": size, "seed": seed, "scale": list(_SCALE),
            "sources": [{**asdict(s), "file": str(p), "sha256": _digest(p)} for s, p in found]}


def _matches(folder: Path, plan: dict) -> bool:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if {k: manifest.get(k) for k in plan} != plan:
        return False
    return all((folder / crop["file"]).is_file() for crop in manifest.get("crops", []))


def _credits(plan: dict, missing: list[PhotoSource]) -> str:
    lines = ["# Credits and licences of the `photos` dataset", "",
             "Each crop is a derived work of one source photograph and carries that photograph's licence.", "",
             "| class | source file | package | author | licence |", "|---|---|---|---|---|"]
    for s in plan["sources"]:
        lines.append(f"| {s['name']} | {s['file']} | {s['package']} | {s['credit']} | {s['licence']} |")
    if missing:
        lines += ["", "Not installed when this folder was built (skipped): "
                  + ", ".join(f"{s.name} ({s.package})" for s in missing) + "."]
    lines += ["", "Licence texts: CC0-1.0 https://creativecommons.org/publicdomain/zero/1.0/ ; CC-BY-2.0 "
              "https://creativecommons.org/licenses/by/2.0/ ; CC-BY-4.0 https://creativecommons.org/licenses/by/4.0/"
              " ; CC-BY-SA-4.0 https://creativecommons.org/licenses/by-sa/4.0/ ; GPL-2+ (on Debian: "
              "/usr/share/common-licenses/GPL-2). Debian packages' full copyright files: "
              "/usr/share/doc/PACKAGE/copyright.", ""]
    return "\n".join(lines)


def build_photos(root: str | Path | None = None, *, crops: int = 100, size: int = 224, seed: int = 0,
                 sources: Sequence[PhotoSource] = PHOTO_SOURCES, log=print) -> Path:
    """Build (or find up to date) the photo-crop image folder `photos_folder(root)`; returns its path.

    Args:
        root: the data root (default `data_root()`, i.e. `$CONVSCOPE_DATA` or `~/.cache/convscope/data`).
        crops: crops per photo. size: side of each crop in pixels. seed: seeds the crop boxes.
        sources: the photographs to use (default `PHOTO_SOURCES`); those not installed are skipped.
        log: where progress lines go (`None`: quiet).

    Raises `DatasetError` when none of the sources is installed.
    """
    from PIL import Image

    say = log or (lambda *_: None)
    if crops < 1 or size < 8:
        raise DatasetError(f"photos: crops must be >= 1 and size >= 8, got crops={crops}, size={size}")
    folder = photos_folder(root)
    found, missing = available_sources(sources)
    if not found:
        raise DatasetError("photos: none of the source photographs is installed (scikit-image, scikit-learn, "
                           "Debian's mate-backgrounds or lomiri-wallpapers-16.04); install one and build again")
    plan = _plan(found, crops, size, seed)
    if _matches(folder, plan):
        say(f"photos: {folder} is up to date ({len(found)} photos x {crops} crops)")
        return folder
    for source in missing:
        say(f"photos: skipping {source.name}: {source.path} ({source.package}) is not installed")
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    records = []
    for source, path in found:
        work, (fx, fy), original = _working_image(path)
        (partial / source.name).mkdir()
        for k, (left, top, right, bottom) in enumerate(_crop_boxes(source.name, seed, crops, *work.size)):
            name = f"{source.name}/{source.name}-{k:03d}.jpg"
            work.resize((size, size), Image.BICUBIC, box=(left, top, right, bottom)).save(
                partial / name, quality=90)
            records.append({"file": name, "class": source.name, "source": str(path), "box": [
                round(left * fx, 1), round(top * fy, 1), round(right * fx, 1), round(bottom * fy, 1)]})
        say(f"photos: {source.name}: {crops} crops of {path.name} ({original[0]}x{original[1]})")
    (partial / "manifest.json").write_text(json.dumps({**plan, "crops": records}, indent=1))
    (partial / "CREDITS.md").write_text(_credits(plan, missing))
    if folder.exists():
        shutil.rmtree(folder)
    partial.replace(folder)
    say(f"photos: wrote {len(records)} crops of {len(found)} photos to {folder}")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convscope.data.photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="data root (default $CONVSCOPE_DATA or ~/.cache/convscope/data)")
    parser.add_argument("--crops", type=int, default=100, help="crops per photo (default 100)")
    parser.add_argument("--size", type=int, default=224, help="crop side in pixels (default 224)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crop boxes (default 0)")
    parser.add_argument("--list", action="store_true", help="list the sources and whether each is installed")
    args = parser.parse_args(argv)
    if args.list:
        for source in PHOTO_SOURCES:
            where = source.locate()
            print(f"{source.name:<22} {'ok' if where else 'missing':<8} {source.licence:<16} {source.package}")
        return 0
    try:
        build_photos(args.root, crops=args.crops, size=args.size, seed=args.seed)
    except DatasetError as error:
        print(f"convscope: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
