"""`Atlas`: one folder holding a SQLite database (WAL) and image files; reading it and writing it crash-safely.

Writing one result is atomic: its images are written to temporary names, flushed and renamed into place, then its
rows (result + images) commit in one transaction. A build killed at any instant leaves either the whole result or
no row for it; a file renamed into place whose row never committed is an orphan that the next build overwrites
with the same bytes and `check` reports, and a temporary file is removed by the next build and reported by `check`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import ConvscopeError
from ..results import Recipe
from ._schema import DB_NAME, FILES, SCHEMA_VERSION, VOLATILE, migrate
from ._schema import create as create_tables

__all__ = ["Atlas", "AtlasError", "Output", "StoredResult", "TEMP_MARK", "now", "file_name"]

TEMP_MARK = ".tmp-"  # images being written are named NAME.png.tmp-PID until renamed into place


class AtlasError(ConvscopeError):
    """An atlas folder that is missing, unreadable, of another schema version, or built with other options."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def file_name(text: str) -> str:
    """A layer name as a file name: letters, digits, '.', '_' and '-' kept, anything else as ~hh (`relu#1` ->
    `relu~231`), so every name maps to one file name and none can climb out of its folder."""
    return re.sub(r"[^A-Za-z0-9._-]", lambda m: "".join(f"~{b:02x}" for b in m[0].encode()), text)


@dataclass(frozen=True)
class Output:
    """One result a stage made, before it is stored: rows and pictures of one (kind, layer, unit).

    `layer` is '' for model-level results, `unit` -1 for layer- and model-level ones; `payload` must be JSON; the
    `images` map a role ("image", "thumb", "strip", "patch:0", ...) to a PIL image (stored as PNG).
    """

    kind: str
    layer: str
    unit: int
    payload: dict[str, Any]
    recipe: Recipe | dict[str, Any]
    images: dict[str, Image.Image] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.kind, self.layer, self.unit)


@dataclass(frozen=True)
class StoredResult:
    """One stored result: its payload, its recipe and its images (role -> path relative to the atlas folder)."""

    kind: str
    layer: str
    unit: int
    stage: str
    payload: dict[str, Any]
    recipe: dict[str, Any]
    images: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "unit": self.unit, "stage": self.stage,
                "payload": self.payload, "recipe": self.recipe, "images": self.images}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _recipe(recipe: Recipe | dict[str, Any]) -> str:
    return _json(recipe.to_dict() if isinstance(recipe, Recipe) else recipe)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Atlas:
    """An atlas folder. `Atlas(folder)` opens an existing one; `Atlas(folder, create=True)` makes it if needed.

    Readers (the viewer) open it with `readonly=True`. A connection belongs to the thread that opened it.
    """

    def __init__(self, folder: str | Path, *, create: bool = False, readonly: bool = False) -> None:
        self.folder = Path(folder)
        self.db = self.folder / DB_NAME
        if not self.db.is_file():
            if not create:
                what = "does not exist" if not self.folder.exists() else f"has no {DB_NAME}"
                raise AtlasError(f"atlas {str(self.folder)!r} {what}; build one with `convscope atlas build`")
            self.folder.mkdir(parents=True, exist_ok=True)
        fresh = not self.db.is_file()
        try:
            if readonly:
                self.conn = sqlite3.connect(f"{self.db.resolve().as_uri()}?mode=ro", uri=True,
                                            isolation_level=None, check_same_thread=False)
            else:
                self.conn = sqlite3.connect(self.db, isolation_level=None, timeout=30)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            if fresh:
                create_tables(self.conn)
            self._check_version(readonly)
        except sqlite3.DatabaseError as error:
            raise AtlasError(f"atlas {str(self.folder)!r}: its database cannot be read ({error})") from None

    def _check_version(self, readonly: bool) -> None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise AtlasError(f"atlas {str(self.folder)!r} has schema version {found}; this convscope reads up to "
                             f"{SCHEMA_VERSION}: upgrade convscope")
        if found < SCHEMA_VERSION:
            if readonly:
                raise AtlasError(f"atlas {str(self.folder)!r} has schema version {found}; run `convscope atlas build`"
                                 f" on it once to upgrade it to {SCHEMA_VERSION}")
            migrate(self.conn, found)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing --------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; any exception (KeyboardInterrupt too) rolls back."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, _json(value)))

    def write_file(self, relative: str, data: bytes) -> None:
        """Write `data` to `relative` (below the folder): a temporary name, flushed to disk, renamed into place."""
        final = self.folder / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.with_name(f"{final.name}{TEMP_MARK}{os.getpid()}")
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)

    def put(self, output: Output, stage: str, *, seconds: float | None = None, run: int | None = None) -> None:
        """Store one result atomically: images first (temp + rename), then its rows in one transaction."""
        self.put_many([output], stage, seconds=seconds, run=run)

    def put_many(self, outputs: list[Output], stage: str, *, seconds: float | None = None,
                 run: int | None = None) -> None:
        """Store several results (say, every kind about one unit) atomically: all or none of their rows commit."""
        rows = []
        for output in outputs:
            for role, image in sorted(output.images.items()):
                data = _png(image)
                suffix = "" if role == "image" else "-" + file_name(role.replace(":", "-"))
                unit = "model" if output.unit < 0 else f"{output.unit}"
                where = f"{FILES}/{file_name(output.kind)}/{file_name(output.layer) or 'model'}/{unit}{suffix}.png"
                self.write_file(where, data)
                rows.append((*output.key, role, where, image.width, image.height, hashlib.sha256(data).hexdigest()))
        with self.transaction() as conn:
            for output in outputs:
                conn.execute("DELETE FROM images WHERE kind = ? AND layer = ? AND unit = ?", output.key)
                conn.execute("DELETE FROM results WHERE kind = ? AND layer = ? AND unit = ?", output.key)
                conn.execute("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (*output.key, stage, _json(output.payload), _recipe(output.recipe), now()))
            conn.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if seconds is not None and run is not None and outputs:
                conn.execute("INSERT INTO timings VALUES (?, ?, ?, ?, ?, ?)",
                             (run, stage, outputs[0].layer, outputs[0].unit, seconds, now()))

    # ---- reading --------------------------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def _models(self, role: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT position, source, label, description, recipe FROM models WHERE role = ? "
                                 "ORDER BY position", (role,)).fetchall()
        return [{"position": p, "source": s, "label": lab, "description": json.loads(d), "recipe": json.loads(r)}
                for p, s, lab, d, r in rows]

    def model(self) -> dict[str, Any] | None:
        """The atlas's model row (source, label, description, recipe), or None before the first build step."""
        found = self._models("model")
        return found[0] if found else None

    def checkpoints(self) -> list[dict[str, Any]]:
        return self._models("checkpoint")

    def layers(self, *, selected: bool | None = None, name: str | None = None) -> list[dict[str, Any]]:
        """Every layer row in model order (`selected=True`: only layers whose units the atlas covers; `name`: that
        layer only)."""
        sql = "SELECT name, position, path, type, shape, params, calls, receptive_field, selected, recipe FROM layers"
        where, args = [], []
        if selected is not None:
            where.append(f"selected = {int(selected)}")
        if name is not None:
            where.append("name = ?")
            args.append(name)
        sql += (" WHERE " + " AND ".join(where)) if where else ""
        rows = self.conn.execute(sql + " ORDER BY position", args).fetchall()
        return [{"name": n, "position": p, "path": path, "type": t, "shape": json.loads(s) if s else None,
                 "params": params, "calls": calls, "receptive_field": json.loads(rf) if rf else None,
                 "selected": bool(sel), "recipe": json.loads(r)}
                for n, p, path, t, s, params, calls, rf, sel, r in rows]

    def layer(self, name: str) -> dict[str, Any] | None:
        found = self.layers(name=name)
        return found[0] if found else None

    def units(self, layer: str) -> list[int]:
        """The units of `layer` the atlas covers, ascending."""
        return [u for (u,) in self.conn.execute("SELECT unit FROM units WHERE layer = ? ORDER BY unit", (layer,))]

    def plan(self) -> list[tuple[str, int, int, int]]:
        """Every planned unit as (layer, unit, chunk, item), in layer then unit order."""
        return self.conn.execute("SELECT u.layer, u.unit, u.chunk, u.item FROM units u JOIN layers l "
                                 "ON u.layer = l.name ORDER BY l.position, u.unit").fetchall()

    def done(self, kind: str) -> set[tuple[str, int]]:
        """(layer, unit) of every stored result of `kind`."""
        return set(self.conn.execute("SELECT layer, unit FROM results WHERE kind = ?", (kind,)).fetchall())

    def results(self, kind: str | None = None, layer: str | None = None, unit: int | None = None, *,
                recipes: bool = True) -> list[StoredResult]:
        """Stored results matching the given kind/layer/unit (None: any), ordered by kind, layer, unit.
        `recipes=False` leaves every recipe empty (faster, for pages that list many results)."""
        where, args = [], []
        for column, value in (("kind", kind), ("layer", layer), ("unit", unit)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        images: dict[tuple[str, str, int], dict[str, str]] = {}
        for k, lay, u, role, path in self.conn.execute(
                f"SELECT kind, layer, unit, role, path FROM images{clause}", args):
            images.setdefault((k, lay, u), {})[role] = path
        recipe = "recipe" if recipes else "'{}'"
        rows = self.conn.execute(f"SELECT kind, layer, unit, stage, payload, {recipe} FROM results{clause} "
                                 "ORDER BY kind, layer, unit", args).fetchall()
        return [StoredResult(k, lay, u, st, json.loads(p), json.loads(r), images.get((k, lay, u), {}))
                for k, lay, u, st, p, r in rows]

    def result(self, kind: str, layer: str = "", unit: int = -1) -> StoredResult | None:
        found = self.results(kind, layer, unit)
        return found[0] if found else None

    def image_rows(self) -> list[tuple[str, str, int, str, str, int, int, str]]:
        return self.conn.execute("SELECT * FROM images ORDER BY path").fetchall()

    def content(self) -> dict[str, list[tuple]]:
        """Every table's rows, sorted, without the columns and tables that record when or how long (`VOLATILE`):
        two builds of the same atlas, one interrupted and resumed, have equal content."""
        out: dict[str, list[tuple]] = {}
        tables = [t for (t,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for table in tables:
            if table in VOLATILE["tables"]:
                continue
            columns = [c[1] for c in self.conn.execute(f"PRAGMA table_info({table})")
                       if c[1] not in VOLATILE["columns"]]
            rows = self.conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            if table == "meta":
                rows = [r for r in rows if r[0] not in VOLATILE["meta"]]
            out[table] = sorted(rows, key=repr)
        return out
