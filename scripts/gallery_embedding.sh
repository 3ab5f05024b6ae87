#!/usr/bin/env bash
# The README's t-SNE grids and probe tables, into docs/gallery/ (until `convscope demo` runs these steps itself).
# Needs the Fashion-MNIST package, the MobileNetV2 weights and the `photos` dataset (all from scripts/setup.sh).
# The .npz files the commands write beside each picture (coordinates, thumbnails) are left out of the gallery.
set -euo pipefail
cd "$(dirname "$0")/.."
CS=${CONVSCOPE:-.venv/bin/convscope}
OUT=docs/gallery
MOBILENET=torchvision:mobilenet_v2@IMAGENET1K_V1
mkdir -p "$OUT"

run() {  # run a convscope command, keeping its standard output (with the command line) in a text file
    local text=$1; shift
    { echo "\$ convscope $*"; "$CS" "$@"; } > "$OUT/$text"
    cat "$OUT/$text"
}

"$CS" tsne convscope:fashion-cnn --data fashion-mnist --limit 1000 -o "$OUT/tsne-fashion.png"
"$CS" tsne "$MOBILENET" --data photos --limit 1000 --size 1024 -o "$OUT/tsne-photos.png"
run probe-fashion.txt probe convscope:fashion-cnn --data fashion-mnist --train-data fashion-mnist --limit 2000 \
    -o "$OUT/probe-fashion.png"
run probe-photos.txt probe "$MOBILENET" --data photos --limit 1700 -o "$OUT/probe-photos.png"
rm -f "$OUT"/tsne-fashion.npz "$OUT"/tsne-photos.npz "$OUT"/probe-fashion.npz "$OUT"/probe-photos.npz
