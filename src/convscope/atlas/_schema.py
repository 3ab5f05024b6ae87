"""The atlas database schema (SQLite), its version, and the migrations between versions.

One atlas is one folder: `atlas.sqlite` plus image files under `files/`, every path stored relative to the folder so
the folder can be copied or moved and still opens. Every row that holds a result says how it was made (`recipe`,
a JSON `convscope.results.Recipe`); `created_at` columns and the `runs` and `timings` tables record when and how
long, and are the only content that differs between a resumed build and an uninterrupted one.

Results are generic: one row per (kind, layer, unit) with a JSON payload, its recipe and the stage that made it;
model-level results use layer '' and unit -1, layer-level results unit -1. The kinds the viewer knows are listed in
`convscope.atlas.kinds`; a new analysis stage adds rows of a new kind without a schema change.
"""

from __future__ import annotations

import sqlite3

__all__ = ["SCHEMA_VERSION", "DB_NAME", "FILES", "create", "migrate", "VOLATILE"]

SCHEMA_VERSION = 1
DB_NAME = "atlas.sqlite"
FILES = "files"  # every image lives below this folder of the atlas; nothing else there is served

# Tables and columns that record when/how long rather than what: left out when two atlases are compared.
VOLATILE = {"tables": ("runs", "timings"), "columns": ("created_at",),
            "meta": ("created_at", "updated_at", "last_run")}

_TABLES = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- the atlas's model (role 'model', exactly one) and the checkpoints of its evolution strips (role 'checkpoint')
CREATE TABLE models (
    role TEXT NOT NULL CHECK (role IN ('model', 'checkpoint')),
    position INTEGER NOT NULL,
    source TEXT NOT NULL,              -- the model string it was loaded from
    label TEXT NOT NULL,               -- short name ("epoch 3", "fashion-cnn")
    description TEXT NOT NULL,         -- JSON: ModelSpec.describe() (channels, input size, weights, hashes, ...)
    recipe TEXT NOT NULL,              -- JSON: how it was loaded (arch, seed, device) and versions
    created_at TEXT NOT NULL,
    PRIMARY KEY (role, position)
);
-- every module call of the model (convscope.list_layers), with a flag for the layers whose units the atlas covers
CREATE TABLE layers (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL UNIQUE,
    path TEXT NOT NULL,
    type TEXT NOT NULL,
    shape TEXT,                        -- JSON list without the batch axis, or null
    params INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    receptive_field TEXT,              -- JSON ReceptiveField.to_dict(), or null
    selected INTEGER NOT NULL DEFAULT 0,
    recipe TEXT NOT NULL,
    created_at TEXT NOT NULL
);
-- the plan: which units of which selected layers the atlas covers, and the render chunk each belongs to
CREATE TABLE units (
    layer TEXT NOT NULL REFERENCES layers(name),
    unit INTEGER NOT NULL,
    chunk INTEGER NOT NULL,            -- fixed render chunk: resumes re-render whole chunks, so results never move
    item INTEGER NOT NULL,             -- position within its chunk (render seeds item i from (seed, i))
    recipe TEXT NOT NULL,
    PRIMARY KEY (layer, unit)
);
CREATE TABLE results (
    kind TEXT NOT NULL,
    layer TEXT NOT NULL,               -- '' for model-level results
    unit INTEGER NOT NULL,             -- -1 for layer- and model-level results
    stage TEXT NOT NULL,               -- the build stage that wrote it
    payload TEXT NOT NULL,             -- JSON, shape documented per kind in convscope.atlas.kinds
    recipe TEXT NOT NULL,              -- JSON Recipe
    created_at TEXT NOT NULL,
    PRIMARY KEY (kind, layer, unit)
);
CREATE TABLE images (
    kind TEXT NOT NULL,
    layer TEXT NOT NULL,
    unit INTEGER NOT NULL,
    role TEXT NOT NULL,                -- "image", "thumb", "strip", "patch:3", ...
    path TEXT NOT NULL UNIQUE,         -- relative to the atlas folder, POSIX separators, below files/
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (kind, layer, unit, role),
    FOREIGN KEY (kind, layer, unit) REFERENCES results(kind, layer, unit) ON DELETE CASCADE
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,              -- running | finished | interrupted | failed
    argv TEXT NOT NULL,
    versions TEXT NOT NULL
);
CREATE TABLE timings (
    run INTEGER NOT NULL REFERENCES runs(id),
    stage TEXT NOT NULL,
    layer TEXT NOT NULL,
    unit INTEGER NOT NULL,
    seconds REAL NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX results_by_layer ON results(layer, unit);
CREATE INDEX images_by_layer ON images(layer, unit);
"""

# version -> SQL that brings an atlas from version-1 to version (none yet: version 1 is the first)
_MIGRATIONS: dict[int, str] = {}


def create(conn: sqlite3.Connection) -> None:
    """Create every table of a new atlas and record the schema version (inside the caller's transaction)."""
    conn.executescript("BEGIN;" + _TABLES + f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');COMMIT;")


def migrate(conn: sqlite3.Connection, found: int) -> None:
    """Bring an atlas at schema version `found` (< SCHEMA_VERSION) up to date, one version per transaction."""
    for version in range(found + 1, SCHEMA_VERSION + 1):
        conn.executescript("BEGIN;" + _MIGRATIONS[version]
                           + f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version';COMMIT;")
