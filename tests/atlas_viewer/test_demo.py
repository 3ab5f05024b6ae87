"""`convscope demo`: a second run does not redo a gallery step whose pictures are there and whose code has not
changed; a missing picture, `--only`, or a different stamp (quick mode) runs the step again. And the demo's CLI
builds without serving (`--no-serve`)."""

from __future__ import annotations

import convscope._demo_steps  # noqa: F401  (the real steps register first; the test replaces the list)
from convscope import demo


def _steps(calls: list[str]):
    def first(ctx):
        calls.append("first")
        (ctx.out / "first.png").write_bytes(b"png")
        return [("first.png", "the first picture")]

    def second(ctx):
        calls.append("second")
        (ctx.out / "second.txt").write_text("hello")
        return [("second.txt", "some text")]

    return [("First step", first), ("Second step", second)]


def test_a_second_demo_run_reuses_unchanged_steps(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(demo, "STEPS", _steps(calls))
    assert demo.run_demo(tmp_path) == 0 and calls == ["first", "second"]
    gallery = (tmp_path / "gallery.md").read_text()
    assert "![the first picture](first.png)" in gallery and "hello" in gallery

    assert demo.run_demo(tmp_path) == 0 and calls == ["first", "second"]  # nothing ran again
    assert (tmp_path / "gallery.md").read_text() == gallery

    (tmp_path / "second.txt").unlink()
    assert demo.run_demo(tmp_path) == 0 and calls[2:] == ["second"]
    assert demo.run_demo(tmp_path, only=["first"]) == 0 and calls[3:] == ["first"]
    assert demo.run_demo(tmp_path, quick=True) == 0 and calls[4:] == ["first", "second"]


def test_the_demo_command_serves_on_loopback_unless_told_not_to(tmp_path, monkeypatch):
    import convscope.atlas.demo
    import convscope.web.app
    from convscope.cli import main

    served: list[tuple] = []
    monkeypatch.setattr(convscope.atlas.demo, "build_demo", lambda root, **_: [tmp_path / "atlas" / "a"])
    monkeypatch.setattr(demo, "run_demo", lambda out, **_: 0)
    monkeypatch.setattr(convscope.web.app, "serve", lambda atlases, **kw: served.append((atlases, kw)))
    args = ["demo", "--atlas", str(tmp_path / "atlas"), "-o", str(tmp_path / "gallery")]
    assert main([*args, "--no-serve"]) == 0 and served == []
    assert main([*args, "--port", "8123"]) == 0
    assert served[0][0] == [tmp_path / "atlas" / "a"]
    assert served[0][1]["host"] == "127.0.0.1" and served[0][1]["port"] == 8123


def test_a_gallery_refresh_without_the_viewer_builds_no_atlas(tmp_path, monkeypatch):
    import convscope.atlas.demo
    from convscope.cli import main

    built: list[str] = []
    monkeypatch.setattr(convscope.atlas.demo, "build_demo", lambda root, **_: built.append(root) or [])
    monkeypatch.setattr(demo, "run_demo", lambda out, **_: 0)
    args = ["demo", "--atlas", str(tmp_path / "atlas"), "-o", str(tmp_path / "gallery"), "--no-serve"]
    assert main([*args, "--only", "Dataset analysis"]) == 0 and built == []
    assert main(args) == 0 and built == [str(tmp_path / "atlas")]  # a whole demo still builds them
