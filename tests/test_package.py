"""The public face: what `import convscope` offers, and the command line's frame."""

from __future__ import annotations

import subprocess
import sys

import pytest

import convscope
from convscope.cli import build_parser, main


def test_public_names_resolve():
    for name in convscope.__all__:
        assert hasattr(convscope, name), f"convscope.__all__ lists {name!r} but it is missing"


def test_every_error_is_a_convscope_error():
    errors = [getattr(convscope, n) for n in convscope.__all__ if n.endswith("Error")]
    assert errors
    for error in errors:
        assert issubclass(error, convscope.ConvscopeError)


def test_help_lists_commands(capsys):
    assert main([]) == 0
    text = capsys.readouterr().out
    assert "usage: convscope" in text


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices, "no subcommands registered"
    for name, command in sub.choices.items():
        assert command.format_help(), name
        assert command.get_default("handler") is not None, f"command {name!r} has no handler"


def test_convscope_error_is_one_line_and_exit_2(capsys):
    code = main(["layers", "no-such-scheme:xyz"]) if "layers" in _commands() else None
    if code is None:
        pytest.skip("layers command not available")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("convscope: error:")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "convscope.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert convscope.__version__ in result.stdout


def _commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)
