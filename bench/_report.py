"""What every benchmark does with its result: write `bench/results/NAME.json`, print JSON or a summary line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def report(name: str, payload: dict, *, save: bool, as_json: bool, summary: str | None = None) -> None:
    """With `save`, write `payload` to `bench/results/{name}.json`; print it as JSON when `as_json`, else print
    `summary` (if any)."""
    if save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    if as_json:
        json.dump(payload, sys.stdout, indent=2)
        print()
    elif summary is not None:
        print(summary)
