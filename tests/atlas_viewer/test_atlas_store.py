"""The atlas store on its own (no model): atomic writes, relative paths, schema version, and what `check` finds."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from PIL import Image

from convscope.atlas import Atlas, AtlasError, BuildConfig, Output, Stage, build, check, register_stage
from convscope.atlas.build import _clean_temp
from convscope.atlas.store import TEMP_MARK, file_name
from convscope.errors import OptionError


def _output(unit: int, shade: int = 10) -> Output:
    return Output("featvis", "conv1", unit, {"value": 1.5 * unit}, {"kind": "test", "params": {"unit": unit}},
                  {"image": Image.new("L", (8, 8), shade), "thumb": Image.new("L", (4, 4), shade)})


def test_put_reads_back_with_relative_paths_and_survives_a_move(tmp_path):
    with Atlas(tmp_path / "a", create=True) as atlas:
        atlas.put(_output(3), "featvis")
        stored = atlas.result("featvis", "conv1", 3)
    assert stored.payload == {"value": 4.5} and stored.recipe["params"] == {"unit": 3}
    assert stored.images == {"image": "files/featvis/conv1/3.png", "thumb": "files/featvis/conv1/3-thumb.png"}
    shutil.move(tmp_path / "a", tmp_path / "elsewhere")
    report = check(tmp_path / "elsewhere")
    assert report.ok and not report.warnings, report.lines()
    with Atlas(tmp_path / "elsewhere", readonly=True) as moved:
        assert (moved.folder / moved.result("featvis", "conv1", 3).images["image"]).is_file()


def test_a_crash_between_rename_and_commit_leaves_no_row_and_check_reports_the_orphan(tmp_path, monkeypatch):
    atlas = Atlas(tmp_path / "a", create=True)
    atlas.put(_output(0), "featvis")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if Ctrl-C / kill arrived after the files were renamed into place

    monkeypatch.setattr(atlas, "transaction", crash)
    with pytest.raises(KeyboardInterrupt):
        atlas.put(_output(1), "featvis")
    atlas.close()
    (tmp_path / "a/files/featvis/conv1" / f"2.png{TEMP_MARK}999").write_bytes(b"half an image")
    report = check(tmp_path / "a")
    assert report.ok, report.lines()  # the committed result is whole; leftovers are warnings
    text = "\n".join(report.warnings)
    assert "files/featvis/conv1/1.png belongs to no stored result" in text
    assert f"temporary file files/featvis/conv1/2.png{TEMP_MARK}999" in text
    with Atlas(tmp_path / "a", readonly=True) as reopened:
        assert reopened.done("featvis") == {("conv1", 0)}
    assert _clean_temp(tmp_path / "a") == [f"files/featvis/conv1/2.png{TEMP_MARK}999"]


def test_an_exception_inside_the_transaction_rolls_back(tmp_path):
    with Atlas(tmp_path / "a", create=True) as atlas:
        with pytest.raises(RuntimeError), atlas.transaction() as conn:
            conn.execute("INSERT INTO results VALUES ('x', '', -1, 's', '{}', '{}', 'now')")
            raise RuntimeError("boom")
        assert atlas.results() == []


def test_check_finds_missing_changed_and_escaping_files(tmp_path):
    with Atlas(tmp_path / "a", create=True) as atlas:
        for unit in range(3):
            atlas.put(_output(unit), "featvis")
    base = tmp_path / "a/files/featvis/conv1"
    (base / "0.png").unlink()
    Image.new("L", (8, 8), 200).save(base / "1.png")
    outside = tmp_path / "secret.png"
    shutil.copyfile(base / "2.png", outside)
    (base / "2.png").unlink()
    (base / "2.png").symlink_to(outside)
    errors = "\n".join(check(tmp_path / "a").errors)
    assert "files/featvis/conv1/0.png is missing" in errors
    assert "files/featvis/conv1/1.png has changed" in errors
    assert "files/featvis/conv1/2.png leads out of the atlas" in errors


def test_check_reports_a_corrupt_database(tmp_path):
    with Atlas(tmp_path / "a", create=True) as atlas:
        for unit in range(40):
            atlas.put(_output(unit), "featvis")
        atlas.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = tmp_path / "a/atlas.sqlite"
    data = bytearray(db.read_bytes())
    page = 4096
    data[2 * page + 100: 3 * page] = b"\xa5" * (page - 100)  # scribble over a page in the middle
    db.write_bytes(bytes(data))
    try:
        report = check(tmp_path / "a")
    except AtlasError as error:  # a header too damaged to open is also a clear, one-line refusal
        assert "cannot be read" in str(error)
    else:
        assert not report.ok and any(e.startswith("database") for e in report.errors), report.lines()


def test_a_newer_schema_is_refused(tmp_path):
    Atlas(tmp_path / "a", create=True).close()
    conn = sqlite3.connect(tmp_path / "a/atlas.sqlite")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(AtlasError, match="schema version 99"):
        Atlas(tmp_path / "a")
    with pytest.raises(AtlasError, match="does not exist"):
        Atlas(tmp_path / "nothing")


def test_file_names_never_leave_their_folder():
    assert file_name("layer1.0.relu#1") == "layer1.0.relu~231"
    assert "/" not in file_name("../../etc/passwd") and file_name("a/b") == "a~2fb"


def test_stage_registry_refuses_duplicates_and_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="already registered"):
        @register_stage
        class Again(Stage):
            name = kind = "featvis"
            level = "unit"
    with pytest.raises(OptionError):
        BuildConfig("convscope:fashion-cnn", units=0)
    with pytest.raises(OptionError, match="precision must be"):
        BuildConfig("convscope:fashion-cnn", precision="fp8")


def test_resuming_with_other_options_is_refused(atlas_copy, tiny_config):
    from dataclasses import replace

    with pytest.raises(AtlasError, match=r"other options \(steps 6 there vs 7 now\)"):
        build(replace(tiny_config, steps=7), atlas_copy)
