"""`convscope attribute` and `evaluate-attribution` as a newcomer meets them (issue 10): several files with a bad one,
method lists, one IG default, progress on stderr, per-image colour scales, bf16 only where it applies."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

import convscope.attribution as A
from convscope.cli import build_parser, main

from test_attribution_evaluate import images  # noqa: F401  (the fixture)

MODEL = "convscope:small-cnn"


@pytest.fixture(scope="module")
def files(images):
    """Two readable PNGs, an empty file and a text file named .png, and a small labelled .npz dataset."""
    good, data = images
    folder = Path(data).parent
    empty = folder / "zero.png"
    empty.write_bytes(b"")
    text = folder / "notes.png"
    text.write_text("not an image")
    return good, str(empty), str(text), data


def test_one_bad_file_does_not_stop_the_batch(files, tmp_path, capsys):
    good, empty, text, _ = files
    code = main(["attribute", MODEL, good[0], empty, good[1], text, "--method", "saliency", "--no-eval", "--json"])
    captured = capsys.readouterr()
    assert code == 2  # nonzero at the end, after the good files were processed
    payload = json.loads(captured.out)
    assert [row["image"] for row in payload["images"]] == [good[0], good[1]]
    assert [row["image"] for row in payload["failed"]] == [empty, text]
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 2 and empty in errors[0] and text in errors[1]
    assert "Traceback" not in captured.err
    assert main(["attribute", MODEL, empty, text, "--method", "saliency"]) == 2  # nothing readable at all
    assert "could be read" in capsys.readouterr().err


def test_method_accepts_a_list_and_rejects_unknown_names(files, capsys):
    good, *_ = files
    assert main(["attribute", MODEL, good[0], "--method", "saliency, gradcam", "--no-eval", "--json"]) == 0
    methods = json.loads(capsys.readouterr().out)["images"][0]["methods"]
    assert list(methods) == ["saliency", "gradcam"]
    assert main(["attribute", MODEL, good[0], "--method", "saliency,gradcamm"]) == 2
    err = capsys.readouterr().err
    assert "gradcamm" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_integrated_gradients_has_one_default_steps(files, tmp_path):
    good, *_ = files
    assert main(["attribute", MODEL, good[0], "--method", "ig", "--no-eval", "--save", str(tmp_path / "ig.npz")]) == 0
    with np.load(tmp_path / "ig.npz") as archive:
        steps = json.loads(str(archive["recipe"]))["params"]["steps"]
    assert steps == inspect.signature(A.integrated_gradients).parameters["steps"].default == 50


def test_occlusion_scores_the_logit_on_the_command_line_too(files, tmp_path, capsys):
    good, *_ = files
    assert main(["attribute", MODEL, good[0], "--method", "saliency,occlusion", "--no-eval", "--json"]) == 0
    methods = json.loads(capsys.readouterr().out)["images"][0]["methods"]
    assert methods["occlusion"]["score"] == pytest.approx(methods["saliency"]["score"], rel=1e-5)
    assert main(["attribute", MODEL, good[0], "--method", "occlusion", "--score", "probability", "--no-eval",
                 "--save", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as archive:
        assert json.loads(str(archive["recipe"]))["params"]["score"] == "probability"


def test_precision_applies_to_occlusion_only(files, tmp_path, capsys):
    good, *_ = files
    assert main(["attribute", MODEL, good[0], "--method", "saliency", "--precision", "bf16"]) == 2
    assert "occlusion only" in capsys.readouterr().err
    assert main(["attribute", MODEL, good[0], "--method", "saliency,occlusion", "--precision", "bf16", "--no-eval",
                 "--save", str(tmp_path / "m.npz")]) == 0
    assert "saliency runs in float32" in capsys.readouterr().err
    with np.load(tmp_path / "m.npz") as archive:
        recipes = json.loads(str(archive["recipe"]))
    assert recipes["occlusion"]["params"]["precision"] == "bf16"


def test_progress_bars_on_stderr(files, monkeypatch, capsys):
    good, _, _, data = files
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws its bars as on a terminal
    assert main(["attribute", MODEL, good[0], "--method", "saliency,gradcam", "--curve-steps", "2"]) == 0
    captured = capsys.readouterr()
    assert "4/4" in captured.err and "4/4" not in captured.out
    assert main(["evaluate-attribution", MODEL, "--data", data, "--methods", "saliency", "--limit", "4",
                 "--batch-size", "2", "--randomize-limit", "1", "--checkpoints", "2", "--curve-steps", "2"]) == 0
    assert "3/3" in capsys.readouterr().err  # two batches and the randomization cascade


def test_panels_scale_each_image_on_its_own_by_default():
    assert build_parser().parse_args(["attribute", MODEL, "x.png"]).normalization == "each"


def test_evaluate_attribution_reports_the_whole_cascade(files, capsys):
    _, _, _, data = files
    assert main(["evaluate-attribution", MODEL, "--data", data, "--methods", "saliency,gradcam", "--limit", "2",
                 "--randomize-limit", "2", "--checkpoints", "3", "--curve-steps", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["methods"]
    for row in rows.values():
        cascade = row["randomization_cascade"]
        assert len(cascade["mean_abs_rho"]) == len(cascade["layers"]) == 3
        assert row["randomization_similarity"] == pytest.approx(max(cascade["mean_abs_rho"]))
        assert row["flagged"] == (row["randomization_similarity"] > 0.5)
