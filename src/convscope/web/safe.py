"""Which file a request may read: only regular files below one folder, by plain relative paths.

Refused (the server answers 404, never saying why): absolute paths, `..`, hidden parts, backslashes, NUL, any `%`
left after the server's one URL decoding (double-encoded tricks such as `%252e%252e`), and symlinks whose target
lies outside the folder.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

__all__ = ["safe_file"]


def safe_file(root: Path, relative: str, *, top: str | None = None) -> Path | None:
    """The file `relative` names below `root` (and below `root/top` when given), or None if it is not one we serve."""
    if not relative or any(c in relative for c in ("\x00", "\\", "%")):
        return None
    pure = PurePosixPath(relative)
    if pure.is_absolute() or any(part in ("", ".", "..") or part.startswith(".") for part in pure.parts):
        return None
    if top is not None and (len(pure.parts) < 2 or pure.parts[0] != top):
        return None
    base = root.resolve()
    fence = base / top if top is not None else base
    try:
        path = (base / pure).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    if not path.is_relative_to(fence) or not path.is_file():
        return None
    return path
