"""Build the `photos` dataset: a few thousand seeded crops of offline sample photographs, one class per photo.

Same as `python -m convscope.data.photos` (see src/convscope/data/photos.py for the sources, licences and layout):

    python scripts/build_photos.py [--root DATA_ROOT] [--crops 100] [--size 224] [--seed 0] [--list]

Idempotent: a folder that already matches the sources and options is left alone. `resolve("photos")` (and
`--data photos` on the command line) then finds it in `$CONVSCOPE_DATA/photos` or `~/.cache/convscope/data/photos`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from convscope.data.photos import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
