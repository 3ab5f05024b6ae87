"""The demo: the main job of the README's first command. It runs convscope's capabilities on the built-in model,
ImageNet MobileNetV2 and sample photos, and writes every picture with its recipe into one folder (the README's
gallery is made this way).

Each step is a small function `step(ctx) -> list[(file name, caption)]`; a step that cannot run on this machine
(e.g. missing offline weights) is reported and skipped, and the demo exits non-zero only if a step fails. A step
whose pictures are already in the folder, made by the same code (the step's and convscope's sources, the versions,
`quick`, the device), is not run again: a second `make demo` refreshes the gallery in seconds. `only` runs the
chosen steps whatever their stamp.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["run_demo", "STEPS"]


@dataclass
class DemoContext:
    out: Path
    device: str | None = None
    quick: bool = False
    cache: dict = field(default_factory=dict)

    def model(self, name: str):
        from .models import load

        if name not in self.cache:
            self.cache[name] = load(name, device=self.device)
        return self.cache[name]

    def photo(self, name: str = "chelsea"):
        """A sample photo -> path of a PNG copy in the output folder: one shipped with convscope (`_photos/`, see
        its README for sources and licences), else one of scikit-image's `skimage.data` when it is installed."""
        path = self.out / "inputs" / f"{name}.png"
        if not path.exists():
            import shutil
            from importlib.resources import files

            path.parent.mkdir(parents=True, exist_ok=True)
            shipped = files("convscope") / "_photos" / f"{name}.png"
            if shipped.is_file():
                with shipped.open("rb") as source, open(path, "wb") as target:
                    shutil.copyfileobj(source, target)
                return path
            try:
                from skimage import data
            except ImportError:
                raise Skip(f"photo {name!r} is not shipped with convscope and scikit-image is not installed "
                           "(pip install scikit-image)") from None
            from PIL import Image

            Image.fromarray(getattr(data, name)()).save(path)
        return path


class Skip(Exception):
    """A step that cannot run here (say why)."""


Step = Callable[[DemoContext], list[tuple[str, str]]]
STEPS: list[tuple[str, Step]] = []


def step(title: str):
    def register(fn: Step) -> Step:
        STEPS.append((title, fn))
        return fn

    return register


def _code_hash() -> str:
    """SHA-256 of convscope's own Python sources and the torch version: what every step's output depends on."""
    import torch

    root = Path(__file__).parent
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _stamp(fn: Step, code: str, ctx: DemoContext) -> str:
    text = json.dumps([inspect.getsource(fn), code, ctx.quick, ctx.device])
    return hashlib.sha256(text.encode()).hexdigest()


def _up_to_date(record: Path, stamp: str, out: Path) -> bool:
    """The step's last run left this stamp and every file it produced is still there."""
    try:
        made = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return made.get("stamp") == stamp and all((out / name).is_file() for name in made.get("files", []))


def run_demo(out: str | Path, *, device: str | None = None, quick: bool = False,
             only: list[str] | None = None) -> int:
    """Run every demo step (or those whose title contains one of `only`); write pictures and `gallery.md` to `out`."""
    from . import _demo_steps  # noqa: F401  (registers the steps)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out=out, device=device, quick=quick)
    lines = ["# convscope gallery", "", "Made by `make demo` (`convscope demo -o docs/gallery`).", ""]
    failed = 0
    sections = out / "sections"  # one markdown fragment per step, so `--only` refreshes a step, not the gallery
    sections.mkdir(exist_ok=True)
    code = _code_hash()
    for number, (title, fn) in enumerate(STEPS):
        if only and not any(o.lower() in title.lower() for o in only):
            continue
        record, stamp = sections / f"{number:02d}.json", _stamp(fn, code, ctx)
        if not only and _up_to_date(record, stamp, out) and (sections / f"{number:02d}.md").is_file():
            print(f"demo: {title}: up to date", flush=True)
            continue
        start = time.perf_counter()
        print(f"demo: {title} ...", flush=True)
        try:
            produced = fn(ctx)
        except Skip as reason:
            print(f"demo: {title}: skipped ({reason})", flush=True)
            continue
        except Exception:  # noqa: BLE001 - the demo reports every failing step and goes on
            failed += 1
            print(f"demo: {title}: FAILED\n{traceback.format_exc()}", flush=True)
            continue
        print(f"demo: {title}: done in {time.perf_counter() - start:.1f}s", flush=True)
        section = [f"## {title}", ""]
        for name, caption in produced:
            if name.endswith(".txt"):
                section += [caption, "", "```", (out / name).read_text().rstrip(), "```", ""]
            else:
                section += [f"![{caption}]({name})", "", caption, ""]
        (sections / f"{number:02d}.md").write_text("\n".join(section))
        record.write_text(json.dumps({"stamp": stamp, "files": [name for name, _ in produced]}))
    for fragment in sorted(sections.glob("*.md")):
        lines.append(fragment.read_text())
    (out / "gallery.md").write_text("\n".join(lines))
    print(f"demo: wrote {out / 'gallery.md'}" + (f"; {failed} step(s) failed" if failed else ""))
    return 1 if failed else 0
