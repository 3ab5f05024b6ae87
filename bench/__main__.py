"""`python -m bench` runs every benchmark; `python -m bench NAME [options]` runs one; `--list` names them."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = names()
    if argv[:1] in (["--list"], ["-l"]):
        print("\n".join(available))
        return 0
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        print("benchmarks:", ", ".join(available))
        return 0
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
        if name not in available:
            print(f"no benchmark {name!r}; choose from {', '.join(available)}", file=sys.stderr)
            return 2
        return importlib.import_module(f"bench.{name}").main(rest)
    status = 0
    for name in available:  # options given without a name go to every benchmark
        print(f"== {name}", flush=True)
        status |= importlib.import_module(f"bench.{name}").main(argv)
    return status


if __name__ == "__main__":
    sys.exit(main())
