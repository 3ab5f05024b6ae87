"""`check`: is an atlas whole? SQLite's integrity check, every referenced file present, inside the atlas and with
the bytes it had when stored, and every leftover of an interrupted build reported."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ._schema import FILES, SCHEMA_VERSION
from .store import TEMP_MARK, Atlas

__all__ = ["CheckReport", "check"]


@dataclass(frozen=True)
class CheckReport:
    """The findings of `check`.

    Attributes:
        folder: the atlas checked.
        errors: problems that make the atlas wrong (corrupt database, missing or altered files, paths leaving it).
        warnings: leftovers of an interrupted build (temporary files, image files no row refers to): harmless, and
            the next `convscope atlas build` of the same atlas removes or reuses them.
        counts: rows per table and files checked.
    """

    folder: Path
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        head = (f"atlas {self.folder}: " + ("OK" if self.ok else f"{len(self.errors)} error(s)") + " ("
                + ", ".join(f"{n} {k}" for k, n in self.counts.items()) + ")")
        return [head] + [f"error: {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]


def _inside(path: str) -> bool:
    pure = PurePosixPath(path)
    return (not pure.is_absolute() and ".." not in pure.parts and len(pure.parts) >= 2 and pure.parts[0] == FILES
            and "\\" not in path)


def check(folder: str | Path) -> CheckReport:
    """Verify the atlas in `folder` (read-only); see `CheckReport`."""
    errors: list[str] = []
    warnings: list[str] = []
    try:
        return _check(Path(folder), errors, warnings)
    except sqlite3.DatabaseError as error:
        return CheckReport(Path(folder), (*errors, f"database: {error}"), tuple(warnings), {})


def _check(folder: Path, errors: list[str], warnings: list[str]) -> CheckReport:
    with Atlas(folder, readonly=True) as atlas:
        root = atlas.folder.resolve()
        verdict = [r[0] for r in atlas.conn.execute("PRAGMA integrity_check")]
        if verdict != ["ok"]:
            errors += [f"database: {line}" for line in verdict[:20]]
        fk = atlas.conn.execute("PRAGMA foreign_key_check").fetchall()
        if fk:
            errors.append(f"database: {len(fk)} row(s) refer to rows that do not exist (first: {fk[0]})")
        version = atlas.meta().get("schema_version")
        if version != SCHEMA_VERSION:
            errors.append(f"schema version {version}, expected {SCHEMA_VERSION}")
        counts = {t: atlas.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("layers", "units", "results", "images")}
        referenced = set()
        for kind, layer, unit, role, path, _w, _h, digest in atlas.image_rows():
            where = f"{kind} {layer or 'model'}:{unit} {role}"
            if not _inside(path):
                errors.append(f"{where}: path {path!r} is not a relative path below {FILES}/")
                continue
            file = atlas.folder / path
            referenced.add(file.resolve())
            if not file.is_file():
                errors.append(f"{where}: file {path} is missing")
            elif not file.resolve().is_relative_to(root):
                errors.append(f"{where}: file {path} leads out of the atlas (symlink)")
            elif hashlib.sha256(file.read_bytes()).hexdigest() != digest:
                errors.append(f"{where}: file {path} has changed since it was stored (sha256 differs)")
        missing_results = atlas.conn.execute(
            "SELECT count(*) FROM units u WHERE NOT EXISTS (SELECT 1 FROM results r WHERE r.kind = 'featvis' "
            "AND r.layer = u.layer AND r.unit = u.unit)").fetchone()[0]
        if missing_results:
            warnings.append(f"{missing_results} planned unit(s) have no feature visualization yet: the build is not "
                            "finished (run the same `convscope atlas build` again to finish it)")
        files = atlas.folder / FILES
        for path in sorted(files.rglob("*")) if files.is_dir() else []:
            if not path.is_file() and not path.is_symlink():
                continue
            name = path.relative_to(atlas.folder).as_posix()
            if TEMP_MARK in path.name:
                warnings.append(f"temporary file {name} left by an interrupted build (the next build removes it)")
            elif path.resolve() not in referenced:
                warnings.append(f"file {name} belongs to no stored result (an interrupted build; the next build "
                                "rewrites it)")
        counts["files"] = len(referenced)
    return CheckReport(Path(folder), tuple(errors), tuple(warnings), counts)
