"""The README's dataset-analysis pictures: fashion-cnn over the 10,000 Fashion-MNIST test images.

    python scripts/analysis_gallery.py [-o docs/gallery]

Writes analysis-fashion-conv2-unit-N.png (top-9 images, patches, DeconvNet and guided-backprop projections, class
purity) for a few units, analysis-fashion-topk-conv2.png (top-9 of 16 units), analysis-fashion-stats.png and
analysis-fashion-stats.txt (the dead-unit summary `convscope stats` prints). Each picture's recipe is beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convscope import analysis
from convscope.models import load

UNITS = (5, 12, 33)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", default="docs/gallery")
    out = Path(parser.parse_args().output)
    out.mkdir(parents=True, exist_ok=True)
    spec = load("convscope:fashion-cnn")
    result = analysis.scan(spec, "fashion-mnist", ["conv1", "conv2", "fc1", "fc2"], k=9)
    for unit in UNITS:
        result.topk.unit("conv2", unit).save(out / f"analysis-fashion-conv2-unit-{unit}.png")
    result.topk.save(out / "analysis-fashion-topk-conv2.png", layer="conv2", units=16)
    result.stats.save(out / "analysis-fashion-stats.png")
    lines = [f"{'layer':<8} {'units':>5} {'dead':>4} {'median active':>13}  dead units"]
    for s in result.stats.summary():
        lines.append(f"{s['layer']:<8} {s['units']:>5} {s['dead']:>4} {s['median_active']:>13.3f}  "
                     f"{', '.join(map(str, s['dead_units'])) or '-'}")
    for unit in UNITS:
        purity = result.topk.purity("conv2", unit)
        lines.append(f"conv2:{unit} top-9 purity: {purity['majority']} {purity['fraction']:.0%} {purity['histogram']}")
    (out / "analysis-fashion-stats.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
