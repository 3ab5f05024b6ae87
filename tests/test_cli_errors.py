"""Every subcommand, fed bad options, says so in one line without a traceback and exits non-zero; shared options
(--device, --debug) work after the subcommand; a closed pipe ends quietly.

Subcommands are enumerated from `build_parser()`, so a new command is covered without touching this file (a new
required argument needs a value in `FILL`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.cli import _common, _limits, build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("cli-errors")
    image = folder / "img.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(image)
    np.savez(folder / "d.npz", images=np.zeros((4, 28, 28), np.uint8), labels=np.arange(4) % 2)
    (folder / "a-file.txt").write_text("not a folder")
    return {"image": str(image), "data": str(folder / "d.npz"), "folder": str(folder),
            "file": str(folder / "a-file.txt")}


# A valid value for every required argument (by dest), so that only the bad option under test is wrong.
FILL = {"model": "convscope:small-cnn", "image": "{image}", "images": "{image}", "arch": "small-cnn",
        "checkpoints": "convscope:small-cnn", "layer": "conv1", "layers": "conv1", "data": "{data}", "target": "0",
        "unit": "0", "output": "{folder}/out.safetensors", "atlas_command": "check", "atlas": "{folder}",
        "atlases": "{folder}"}


def _leaf(parser: argparse.ArgumentParser, fill: dict[str, str] = FILL) -> tuple[list[str], argparse.ArgumentParser]:
    """A command with verbs (`atlas check`): the verbs FILL picks, and the parser that takes the options."""
    verbs: list[str] = []
    while subs := [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]:
        verbs.append(fill[subs[0].dest])
        parser = subs[0].choices[verbs[-1]]
    return verbs, parser


def _required(parser: argparse.ArgumentParser, files: dict[str, str], fill: dict[str, str] = FILL) -> list[str]:
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings and action.nargs != 0:  # positional
            assert action.dest in fill, f"add a valid value for the new argument {action.dest!r} to FILL"
            argv.append(fill[action.dest].format(**files))
    for action in parser._actions:
        if action.option_strings and action.required:
            assert action.dest in fill, f"add a valid value for the new option {action.dest!r} to FILL"
            argv += [action.option_strings[0], fill[action.dest].format(**files)]
    return argv


def _bad_options(parser: argparse.ArgumentParser, files: dict[str, str]) -> list[tuple[list[str], str]]:
    """(extra argv, a word the error must name) for every kind of bad option this subcommand takes."""
    cases = [(["--device", "foo"], "foo"), (["--no-such-option"], "--no-such-option")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "cuda"))
    for action in parser._actions:
        flag = action.option_strings[-1] if action.option_strings else None
        if flag is None or action.nargs == 0 or flag in ("--device", "--help"):
            continue
        arity = action.nargs if isinstance(action.nargs, int) else 1
        if action.type is _common.output_folder:
            cases.append(([flag, files["file"]], "a-file.txt"))
        elif action.type in (_common.picture_output, _common.npz_output, _common.model_output):
            cases += [([flag, files["folder"] + "/"], "folder"), ([flag, "/proc/x.png"], "/proc"),
                      ([flag, files["folder"] + "/no-suffix"], "no-suffix")]
        elif action.type is _common.positive_int:
            cases.append(([flag, *["0"] * arity], flag))
        elif action.type in (int, float):
            cases.append(([flag, *["x1"] * arity], "x1"))
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            cases.append(([flag, "nonsense"], "nonsense"))
    return cases


def _one_line(capsys, code: int, word: str) -> str:
    err = capsys.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert word in err, err
    return err


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_subcommand_refuses_bad_options_in_one_line(command, files, capsys):
    verbs, parser = _leaf(_subcommands()[command])
    required = _required(parser, files)
    for extra, word in _bad_options(parser, files):
        _one_line(capsys, main([command, *verbs, *required, *extra]), word)


@pytest.mark.parametrize("command", sorted(c for c, p in _subcommands().items()
                                          if {"model", "checkpoints", "arch"} & {a.dest for a in p._actions}))
def test_every_subcommand_names_a_bad_model_in_one_line(command, files, capsys):
    fill = {**FILL, "model": "convscope:no-such-model", "checkpoints": "convscope:no-such-model",
            "arch": "no-such-model"}
    parser = _subcommands()[command]
    argv = [command, *_required(parser, files, fill)]
    if "output" in {a.dest for a in parser._actions} and "-o" not in argv:
        argv += ["-o", os.path.join(files["folder"], f"{command}.png")]
    _one_line(capsys, main(argv), "no-such-model")


def test_device_and_debug_are_accepted_after_the_subcommand_and_listed_in_its_help(capsys):
    parser = build_parser()
    for argv in (["--device", "cpu", "models"], ["models", "--device", "cpu"]):
        assert parser.parse_args(argv).device == "cpu"
    assert parser.parse_args(["--device", "cpu", "models"]).debug is False
    assert parser.parse_args(["models", "--debug"]).debug is True
    assert parser.parse_args(["models"]).device is None  # the subcommand does not clobber the top-level default
    for command in _subcommands():
        assert main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "--device" in out and "--debug" in out, command


def test_debug_after_the_subcommand_shows_the_traceback(files):
    with pytest.raises(Exception, match="no-such-model"):
        main(["layers", "convscope:no-such-model", "--debug"])


def test_a_device_that_is_not_there_is_refused_before_any_work():
    for text in ("foo", "cuda:99", "meta"):
        with pytest.raises(argparse.ArgumentTypeError, match=text.split(":")[0]):
            _common.device_option(text)
    assert _common.device_option("cpu") == "cpu"


def test_output_that_cannot_be_written_is_refused(tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(image)
    for output, word in ((str(tmp_path) + "/", "folder"), (str(tmp_path), "folder"), ("/proc/x.png", "/proc"),
                         (str(image) + "/y.png", "is a file")):
        _one_line(capsys, main(["activations", "convscope:small-cnn", str(image), "--layer", "conv1", "-o", output]),
                  word)
    # a folder that does not exist yet is fine: it is created
    assert main(["activations", "convscope:small-cnn", str(image), "--layer", "conv1", "-o",
                 str(tmp_path / "new" / "grid.png")]) == 0
    assert (tmp_path / "new" / "grid.png").is_file()


def test_sizes_must_be_positive(capsys):
    for size in ("0", "0x5", "-3", "12y"):
        _one_line(capsys, main(["visualize", "convscope:small-cnn", "--layer", "conv1", "--unit", "0", "--size", size,
                                "--steps", "1"]), size)


def test_a_size_whose_memory_would_not_fit_is_refused_with_an_estimate(tmp_path, capsys):
    picture = str(tmp_path / "x.png")
    for argv in (["visualize", "convscope:small-cnn", "--layer", "conv1", "--unit", "0", "--size", "100000", "-o",
                  picture],
                 ["class-model", "convscope:small-cnn", "--target", "1", "--size", "100000", "-o", picture],
                 ["layers", "convscope:small-cnn", "--input-size", "100000", "100000"],
                 ["train", "small-cnn", "--data", "nowhere", "--size", "100000", "100000", "-o",
                  str(tmp_path / "m.safetensors")]):
        err = _one_line(capsys, main(argv), "GB")
        assert "100000x100000" in err and "at most about" in err


def test_the_suggested_size_fits_and_a_larger_one_does_not(monkeypatch):
    from convscope import load

    spec = load("convscope:small-cnn")
    monkeypatch.setattr(_limits, "available_bytes", lambda device: 64 * 2**20)
    with pytest.raises(_limits.OptionError, match="at most about") as refused:
        _limits.check_fits(spec, 4000)
    side = int(str(refused.value).rsplit("about ", 1)[1].split("x")[0])
    assert 28 < side < 4000
    _limits.check_fits(spec, side)  # fits
    with pytest.raises(_limits.OptionError):
        _limits.check_fits(spec, int(side * 1.2))


def test_top_must_be_at_least_one(files, capsys):
    for top in ("0", "-2"):
        _one_line(capsys, main(["predict", "convscope:small-cnn", files["image"], "--top", top]), "--top")


def test_predict_reports_each_bad_file_and_still_classifies_the_good_ones(tmp_path, files, capsys):
    empty = tmp_path / "zero.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    code = main(["predict", "convscope:small-cnn", files["image"], str(empty), files["image"], str(missing),
                 "--top", "2"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out.count(files["image"]) == 2 and "zero.png" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "zero.png" in lines[0] and "missing.png" in lines[1] and "Traceback" not in err
    assert main(["predict", "convscope:small-cnn", files["image"], str(empty), "--json"]) == 2
    import json

    payload = json.loads(capsys.readouterr().out)
    assert [row["input"] for row in payload["predictions"]] == [files["image"]]
    assert [bad["input"] for bad in payload["failed"]] == [str(empty)]


def test_a_closed_pipe_ends_quietly(tmp_path):
    # `layers` rather than `models --json | head` (the same path through `main`): listing torchvision costs seconds
    proc = subprocess.Popen([sys.executable, "-m", "convscope.cli", "layers", "convscope:small-cnn", "--json", "--rf",
                             "none"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader goes away before anything is written, as `| head` does after ten lines
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    proc.stderr.close()
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 141
