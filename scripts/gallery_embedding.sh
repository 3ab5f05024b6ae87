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
{  # the crops keep their photos' licences: credit them beside the picture
    echo "# Credits for the photo crops in tsne-photos.png"; echo
    echo "tsne-photos.png shows 1,000 crops of the \`photos\` dataset (src/convscope/data/photos.py); each crop is a derived"
    echo "work of its source photograph and carries that photograph's licence (CC-BY-SA and GPL-2+ sources: the picture is"
    echo "shared under the same terms). Written by the dataset builder as CREDITS.md:"; echo
    tail -n +3 "${CONVSCOPE_DATA:-$HOME/.cache/convscope/data}/photos/CREDITS.md" | sed 's|/[^ ]*/site-packages/|site-packages/|'
} > "$OUT/tsne-photos-credits.md"
rm -f "$OUT"/tsne-fashion.npz "$OUT"/tsne-photos.npz "$OUT"/probe-fashion.npz "$OUT"/probe-photos.npz
